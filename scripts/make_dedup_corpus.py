"""A corpus with planted exact and near duplicates, built from real prose (the docstrings of
the Python standard library this script runs on), for checking examples/prepare_data.rs on
text it was not designed around. Used for the figures in docs/data.md.

    python scripts/make_dedup_corpus.py SEED OUT_DIR [ORIGINALS.jsonl] [--heavy]
    cargo run --release --example prepare_data -- --input OUT_DIR/part1.txt OUT_DIR/part2.jsonl --output OUT
    python scripts/check_dedup_corpus.py OUT_DIR OUT

Originals are docstrings of 40-400 words (or the `text` of ORIGINALS.jsonl, e.g. a
documents.jsonl that prepare_data already deduplicated, so the originals hold no duplicates of
their own); 200 exact copies (upper/lower case, re-spacing, NFKC-equivalent characters) and 200
near copies (1-5% of the words replaced, inserted or deleted, 8-10% with --heavy, plus
punctuation/case/line changes) are shuffled in and written half as text (blank-line separated),
half as JSONL. OUT_DIR/truth.json records what each document is.
"""
import ast, glob, json, random, re, sys
random.seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
EDIT = (0.08, 0.10) if '--heavy' in sys.argv else (0.01, 0.05)
sys.argv = [a for a in sys.argv if a != '--heavy']
docs = []
seen = set()
for path in sorted(glob.glob('/root/.pyenv/versions/3.13.0/lib/python3.13/**/*.py', recursive=True)):
    if '/test' in path: continue
    try:
        tree = ast.parse(open(path, encoding='utf-8').read())
    except Exception:
        continue
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Module)):
            d = ast.get_docstring(node)
            if not d: continue
            d = re.sub(r'\n\s*\n', '\n', d.strip())
            n = len(d.split())
            if 40 <= n <= 400 and d not in seen:
                seen.add(d); docs.append(d)
if len(sys.argv) > 3:
    docs = [json.loads(l)['text'] for l in open(sys.argv[3])]
random.shuffle(docs)
docs = docs[:3000]
words = [w for d in docs for w in d.split() if w.isalpha()]
N_EX, N_NEAR = 200, 200
def exact_variant(d):
    r = random.random()
    if r < 0.25: return d.upper()
    if r < 0.5: return '  ' + d.replace(' ', '   ').replace('\n', ' \n ') + '  '
    if r < 0.75: return d.lower()
    return d.replace('fi', '\ufb01').replace('A', '\uff21')
def near_variant(d):
    w = d.split(' ')
    k = max(1, int(len(w) * random.uniform(*EDIT)))
    for _ in range(k):
        i = random.randrange(len(w)); op = random.random()
        if op < 0.6: w[i] = random.choice(words)
        elif op < 0.8 and len(w) > 3: del w[i]
        else: w.insert(i, random.choice(words))
    s = ' '.join(w)
    r = random.random()
    if r < 0.3: s = s.replace('.', '!').replace(',', ';')
    elif r < 0.5: s = s.lower()
    elif r < 0.7: s = s.replace('\n', ' ')
    return s
items = [(d, 'u', i) for i, d in enumerate(docs)]
for _ in range(N_EX):
    i = random.randrange(len(docs)); items.append((exact_variant(docs[i]), 'e', i))
for _ in range(N_NEAR):
    i = random.randrange(len(docs)); items.append((near_variant(docs[i]), 'n', i))
random.shuffle(items)
out = sys.argv[2] if len(sys.argv) > 2 else '/tmp/kd/unseen'
half = len(items) // 2
with open(f'{out}/part1.txt', 'w') as f:
    for d, _, _ in items[:half]: f.write(d + '\n\n')
with open(f'{out}/part2.jsonl', 'w') as f:
    for d, _, _ in items[half:]: f.write(json.dumps({'text': d}) + '\n')
with open(f'{out}/originals.txt', 'w') as f:
    for d in docs: f.write(d + '\n\n')
json.dump([{'kind':k,'src':i,'text':d} for d,k,i in items], open(f'{out}/truth.json','w'))
print(len(docs), 'originals', N_EX, 'exact', N_NEAR, 'near; total', len(items))
