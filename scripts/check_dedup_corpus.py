"""Checks a prepare_data output directory against the truth written by
scripts/make_dedup_corpus.py: how many planted groups (an original and its copies) kept more
than one document, and the true character-5-shingle Jaccard similarity of the planted near
copies to their originals.

    python scripts/check_dedup_corpus.py CORPUS_DIR PREPARED_DIR
"""
import json, re, sys, unicodedata
def norm(t):
    t = unicodedata.normalize('NFKC', t).lower()
    return ' '.join(re.findall(r'[^\W_]+', t))
def sh(t, k=5): return {t[i:i+k] for i in range(max(1, len(t)-k+1))}
truth = json.load(open(sys.argv[1] + '/truth.json'))
kept = [json.loads(l)['text'] for l in open(sys.argv[2] + '/documents.jsonl')]
from collections import Counter
kc = Counter(' '.join(unicodedata.normalize('NFKC', k).lower().split()) for k in kept)
def ek(t): return ' '.join(unicodedata.normalize('NFKC', t).lower().split())
# group by source: count kept per group
groups = {}
for it in truth: groups.setdefault(it['src'], []).append(it)
orig_text = {it['src']: it['text'] for it in truth if it['kind']=='u'}
extra = 0; missed = []
for src, items in groups.items():
    n_kept = len({ek(it['text']) for it in items if kc[ek(it['text'])] > 0})
    if n_kept > 1:
        extra += n_kept - 1
        for it in items:
            if it['kind']=='n' and kc[ek(it['text'])]>0:
                a, b = sh(norm(it['text'])), sh(norm(orig_text[src]))
                missed.append((len(a&b)/len(a|b), len(orig_text[src].split())))
print('groups', len(groups), 'extra kept', extra, 'missed near (J, words):', sorted(missed))

js = sorted(len(sh(norm(it['text'])) & sh(norm(orig_text[it['src']]))) / len(sh(norm(it['text'])) | sh(norm(orig_text[it['src']]))) for it in truth if it['kind'] == 'n')
if js:
    print('near copies J: min %.3f p10 %.3f median %.3f max %.3f; below 0.8: %d' % (js[0], js[len(js)//10], js[len(js)//2], js[-1], sum(j < 0.8 for j in js)))
