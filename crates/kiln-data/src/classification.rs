//! Text classification from JSONL (`{"text": ..., "label": ...}` per line) or CSV (a header
//! row naming `text` and `label` columns; RFC 4180 quoting), tokenized on access and padded
//! per batch.
//!
//! Labels may be non-negative integers (used as class ids) or strings (sorted, then numbered).
//! Any other label (a negative or fractional number, `null`, an array or object) is counted,
//! and the file is refused with [`DataError::BadLabels`] naming the count and the first one:
//! dropping those examples would silently train on part of the data (a file labelled -1/1
//! would lose half of it). The number of classes is bounded by [`crate::limits::CLASSES`].

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::batch::ClassificationBatch;
use crate::limits::CLASSES;
use crate::tokenizer::Tokenizer;

/// One labeled text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassificationExample {
    /// The text.
    pub text: String,
    /// The class id.
    pub label: usize,
}

/// Labeled texts read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassificationData {
    /// The examples, in file order.
    pub examples: Vec<ClassificationExample>,
    /// Class names by id (the integers themselves, as text, for integer labels).
    pub label_names: Vec<String>,
    /// Lines or records skipped as malformed (only when not strict).
    pub skipped: Vec<DataError>,
}

enum RawLabel {
    Int(usize),
    Name(String),
}

impl ClassificationData {
    /// Reads JSONL (`.jsonl`/`.json`) or CSV (`.csv`, or any other name whose first line is not
    /// a JSON object). With `strict`, the first malformed line is the error; otherwise such
    /// lines are skipped and listed in [`ClassificationData::skipped`]. Labels that are neither
    /// class ids nor names are [`DataError::BadLabels`], strict or not; more classes than
    /// [`CLASSES`] is [`DataError::Limit`].
    pub fn load(path: impl AsRef<Path>, strict: bool) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bytes = kiln_base::limits::read_bounded(path, &kiln_base::limits::TEXT_FILE_BYTES)?;
        let name = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            DataError::InvalidUtf8 {
                path: name.clone(),
                line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
            }
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let jsonl = match ext.as_str() {
            "jsonl" | "json" => true,
            "csv" => false,
            _ => text.trim_start().starts_with('{'),
        };
        let mut skipped = Vec::new();
        let mut raw = Vec::new();
        // Labels that are neither ids nor names: (count, first line, first label).
        let mut bad_labels: Option<(usize, usize, String)> = None;
        let mut keep = |r: Result<(String, RawLabel), DataError>| -> Result<(), DataError> {
            match r {
                Ok(x) => raw.push(x),
                Err(e) if strict => return Err(e),
                Err(e) => skipped.push(e),
            }
            Ok(())
        };
        if jsonl {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match parse_json_example(line, &name, i + 1) {
                    Err(Label::Bad(label)) => {
                        let first = bad_labels.get_or_insert((0, i + 1, label));
                        first.0 += 1;
                    }
                    Err(Label::Malformed(e)) => keep(Err(e))?,
                    Ok(example) => keep(Ok(example))?,
                }
            }
        } else {
            let records = csv_records(&text, &name)?;
            let Some(((header_line, header), rows)) = records.split_first() else {
                return Err(DataError::MalformedCsv {
                    path: name,
                    line: 1,
                    message: "empty file".into(),
                });
            };
            let col = |want: &str| {
                header
                    .iter()
                    .position(|h| h.trim().eq_ignore_ascii_case(want))
                    .ok_or_else(|| DataError::MalformedCsv {
                        path: name.clone(),
                        line: *header_line,
                        message: format!("no {want:?} column in header {header:?}"),
                    })
            };
            let (ti, li) = (col("text")?, col("label")?);
            for (line, fields) in rows {
                keep(match (fields.get(ti), fields.get(li)) {
                    (Some(t), Some(l)) => Ok((t.to_string(), raw_label_of_str(l))),
                    _ => Err(DataError::MalformedCsv {
                        path: name.clone(),
                        line: *line,
                        message: format!("{} fields, header has {}", fields.len(), header.len()),
                    }),
                })?;
            }
        }
        if let Some((count, line, label)) = bad_labels {
            return Err(DataError::BadLabels {
                path: name,
                count,
                line,
                label,
            });
        }
        let (examples, label_names) = number_labels(raw)?;
        Ok(Self {
            examples,
            label_names,
            skipped,
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.label_names.len()
    }
}

fn raw_label_of_str(s: &str) -> RawLabel {
    s.trim()
        .parse::<usize>()
        .map_or_else(|_| RawLabel::Name(s.trim().to_string()), RawLabel::Int)
}

/// Why a JSONL line gave no example.
enum Label {
    /// The line is not an object with a string `text` and a `label`.
    Malformed(DataError),
    /// The label is there but is neither a class id nor a name (as written).
    Bad(String),
}

fn parse_json_example(line: &str, path: &str, n: usize) -> Result<(String, RawLabel), Label> {
    let err = |message: String| {
        Label::Malformed(DataError::MalformedJson {
            path: path.into(),
            line: n,
            message,
        })
    };
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
    let text = v
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or_else(|| err("no string \"text\" field".into()))?;
    let label = match v.get("label") {
        None => return Err(err("no \"label\" field (integer or string)".into())),
        Some(serde_json::Value::Number(x)) => match x.as_u64().map(usize::try_from) {
            Some(Ok(id)) => RawLabel::Int(id),
            _ => return Err(Label::Bad(x.to_string())),
        },
        Some(serde_json::Value::String(s)) => raw_label_of_str(s),
        Some(serde_json::Value::Bool(b)) => RawLabel::Int(*b as usize),
        Some(other) => return Err(Label::Bad(other.to_string())),
    };
    Ok((text.to_string(), label))
}

fn number_labels(
    raw: Vec<(String, RawLabel)>,
) -> Result<(Vec<ClassificationExample>, Vec<String>), DataError> {
    let all_int = raw.iter().all(|(_, l)| matches!(l, RawLabel::Int(_)));
    let names: Vec<String> = if all_int {
        let max = raw
            .iter()
            .map(|(_, l)| if let RawLabel::Int(i) = l { *i } else { 0 })
            .max();
        match max {
            // Checked before `0..=m` allocates one name per class.
            Some(m) => {
                let classes = CLASSES.check("the classes (largest label + 1)", m as u128 + 1)?;
                (0..classes).map(|i| i.to_string()).collect()
            }
            None => Vec::new(),
        }
    } else {
        let mut n: Vec<String> = raw
            .iter()
            .map(|(_, l)| match l {
                RawLabel::Int(i) => i.to_string(),
                RawLabel::Name(s) => s.clone(),
            })
            .collect();
        n.sort();
        n.dedup();
        CLASSES.check("the classes (distinct labels)", n.len() as u64)?;
        n
    };
    let examples = raw
        .into_iter()
        .map(|(text, l)| {
            let label = match l {
                RawLabel::Int(i) if all_int => i,
                RawLabel::Int(i) => names.binary_search(&i.to_string()).expect("named"),
                RawLabel::Name(s) => names.binary_search(&s).expect("named"),
            };
            ClassificationExample { text, label }
        })
        .collect();
    Ok((examples, names))
}

/// The records of a CSV file with the 1-based line each starts on, as the `csv` crate reads
/// them: comma-separated, fields optionally in double quotes (`""` escapes a quote; quoted
/// fields may hold commas and newlines), blank lines skipped.
fn csv_records(text: &str, path: &str) -> Result<Vec<(usize, csv::StringRecord)>, DataError> {
    let malformed = |line: usize, message: String| DataError::MalformedCsv {
        path: path.into(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let (mut records, mut record) = (Vec::new(), csv::StringRecord::new());
    // The line the reader stands on. Counted here rather than taken from the reader's
    // positions, which point before the blank lines and the `\n` of a `\r\n` that precede a
    // record rather than at its first line.
    let mut line = 1;
    loop {
        let start = reader.position().byte() as usize;
        let more = reader
            .read_record(&mut record)
            .map_err(|e| malformed(line, e.to_string()))?;
        if !more {
            break;
        }
        let raw = &text[start..reader.position().byte() as usize];
        let body = raw.trim_start_matches(['\r', '\n']);
        line += raw[..raw.len() - body.len()].matches('\n').count();
        // The reader takes a quote inside an unquoted field as text, and an unterminated
        // quoted field as running to the end of the file: either leaves an odd number of
        // quotes in the record, where quoted fields and `""` escapes always pair them.
        if body.matches('"').count() % 2 == 1 {
            return Err(malformed(
                line,
                "unbalanced double quotes (a quoted field never closed, or a quote inside an \
                 unquoted field)"
                    .into(),
            ));
        }
        records.push((line, record.clone()));
        line += body.matches('\n').count();
    }
    Ok(records)
}

/// A tokenized example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassificationItem {
    /// Token ids (`[CLS] … [SEP]` when the vocabulary has them).
    pub input_ids: Vec<u32>,
    /// The class id.
    pub label: usize,
}

/// Examples tokenized on access, truncated to `max_len` tokens (special tokens included).
#[derive(Clone, Debug)]
pub struct ClassificationDataset {
    examples: Arc<Vec<ClassificationExample>>,
    tokenizer: Arc<Tokenizer>,
    max_len: usize,
    cls: Option<u32>,
    sep: Option<u32>,
}

impl ClassificationDataset {
    /// Wraps `examples`; `[CLS]`/`[SEP]` are added when the tokenizer has them.
    pub fn new(
        examples: Vec<ClassificationExample>,
        tokenizer: Arc<Tokenizer>,
        max_len: usize,
    ) -> Result<Self, DataError> {
        let (cls, sep) = (
            tokenizer.token_to_id("[CLS]"),
            tokenizer.token_to_id("[SEP]"),
        );
        let specials = cls.is_some() as usize + sep.is_some() as usize;
        if max_len <= specials {
            return Err(DataError::InvalidConfig(format!(
                "max_len {max_len} leaves no room for text"
            )));
        }
        Ok(Self {
            examples: Arc::new(examples),
            tokenizer,
            max_len,
            cls,
            sep,
        })
    }

    /// The tokenized example at `index`.
    pub fn item(&self, index: usize) -> Result<ClassificationItem, DataError> {
        let ex = self.examples.get(index).ok_or(DataError::IndexOutOfRange {
            index,
            len: self.examples.len(),
        })?;
        let mut body = self.tokenizer.encode(&ex.text)?;
        body.truncate(self.max_len - self.cls.is_some() as usize - self.sep.is_some() as usize);
        let mut input_ids = Vec::with_capacity(body.len() + 2);
        input_ids.extend(self.cls);
        input_ids.extend(body);
        input_ids.extend(self.sep);
        Ok(ClassificationItem {
            input_ids,
            label: ex.label,
        })
    }
}

impl Dataset<ClassificationItem> for ClassificationDataset {
    fn get(&self, index: usize) -> Result<ClassificationItem, DatasetError> {
        self.item(index).map_err(DatasetError::new)
    }

    fn len(&self) -> usize {
        self.examples.len()
    }
}

/// Pads tokenized examples to the longest of the batch.
#[derive(Clone, Copy, Debug)]
pub struct ClassificationBatcher {
    /// The `[PAD]` id.
    pub pad_id: u32,
}

impl ClassificationBatcher {
    /// A batcher padding with `pad_id`.
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }
}

impl Batcher<ClassificationItem, ClassificationBatch> for ClassificationBatcher {
    fn batch(&self, items: Vec<ClassificationItem>, device: &Device) -> ClassificationBatch {
        let (b, seq) = (
            items.len(),
            items.iter().map(|i| i.input_ids.len()).max().unwrap_or(0),
        );
        let mut ids = vec![self.pad_id as i64; b * seq];
        let mut padding = vec![true; b * seq];
        for (r, item) in items.iter().enumerate() {
            for (t, &id) in item.input_ids.iter().enumerate() {
                ids[r * seq + t] = id as i64;
                padding[r * seq + t] = false;
            }
        }
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        ClassificationBatch {
            input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [b, seq]), device),
            token_type_ids: Tensor::<2, Int>::zeros([b, seq], device),
            padding_mask: Tensor::<2, Bool>::from_data(TensorData::new(padding, [b, seq]), device),
            labels: Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(ext: &str, content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn reads_jsonl_with_string_labels_and_reports_bad_lines() {
        let f = file(
            ".jsonl",
            b"{\"text\": \"good film\", \"label\": \"pos\"}\n\n{\"text\": \"bad\", \"label\": \"neg\"}\n{oops\n{\"label\": \"pos\"}\n",
        );
        let data = ClassificationData::load(f.path(), false).unwrap();
        assert_eq!(data.label_names, vec!["neg", "pos"]);
        assert_eq!(
            data.examples.iter().map(|e| e.label).collect::<Vec<_>>(),
            vec![1, 0]
        );
        assert_eq!(data.skipped.len(), 2);
        assert!(matches!(
            data.skipped[0],
            DataError::MalformedJson { line: 4, .. }
        ));
        assert!(matches!(
            data.skipped[1],
            DataError::MalformedJson { line: 5, .. }
        ));
        let strict = ClassificationData::load(f.path(), true).unwrap_err();
        assert!(
            matches!(strict, DataError::MalformedJson { line: 4, .. }),
            "{strict}"
        );
    }

    #[test]
    fn reads_csv_with_quotes_and_integer_labels() {
        let f = file(
            ".csv",
            b"id,text,label\r\n1,\"hello, \"\"world\"\"\",2\r\n2,\"two\nlines\",0\n3,plain,1\n4,short\n",
        );
        let data = ClassificationData::load(f.path(), false).unwrap();
        assert_eq!(
            data.examples[0],
            ClassificationExample {
                text: "hello, \"world\"".into(),
                label: 2
            }
        );
        assert_eq!(data.examples[1].text, "two\nlines");
        assert_eq!(data.num_classes(), 3);
        assert!(matches!(
            data.skipped[..],
            [DataError::MalformedCsv { line: 6, .. }]
        ));
        let malformed_at =
            |f: &tempfile::NamedTempFile| match ClassificationData::load(f.path(), false) {
                Err(DataError::MalformedCsv { path, line, .. }) => {
                    assert_eq!(path, f.path().display().to_string());
                    line
                }
                other => panic!("{other:?}"),
            };
        let bad = file(".csv", b"text,label\nok,1\n\"unterminated,1\nx,0\n");
        assert_eq!(malformed_at(&bad), 3);
        let stray = file(".csv", b"text,label\nok,1\nsay \"hi,0\nx,1\n");
        assert_eq!(malformed_at(&stray), 3);
        let no_col = file(".csv", b"\nbody,label\nx,1\n");
        assert_eq!(malformed_at(&no_col), 2);
        assert_eq!(malformed_at(&file(".csv", b"\n\n")), 1);
        // Blank lines are skipped and counted, with `\n` or `\r\n` line ends.
        let blanks = file(
            ".csv",
            b"text,label\r\n\r\n\"a\r\nb\",1\r\n\r\n\r\nshort\r\nc,0\n\nd\n",
        );
        let data = ClassificationData::load(blanks.path(), false).unwrap();
        assert_eq!(data.examples.len(), 2);
        assert_eq!(data.examples[0].text, "a\r\nb");
        assert!(matches!(
            data.skipped[..],
            [
                DataError::MalformedCsv { line: 7, .. },
                DataError::MalformedCsv { line: 10, .. }
            ]
        ));
        let utf8 = file(".csv", b"text,label\nok,1\n\xff\xfe,0\n");
        assert_eq!(
            ClassificationData::load(utf8.path(), false).unwrap_err(),
            DataError::InvalidUtf8 {
                path: utf8.path().display().to_string(),
                line: 3
            }
        );
    }

    /// Issue 14: a label of 10^12 allocated one name string per possible class.
    #[test]
    fn label_of_10_pow_12_is_a_limit_error() {
        let f = file(
            ".jsonl",
            b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1000000000000}\n",
        );
        let err = ClassificationData::load(f.path(), false).unwrap_err();
        assert!(
            matches!(&err, DataError::Limit(l) if l.value == 1_000_000_000_001),
            "{err}"
        );
        let csv = file(".csv", b"text,label\na,0\nb,1000000000000\n");
        assert!(matches!(
            ClassificationData::load(csv.path(), false),
            Err(DataError::Limit(_))
        ));
    }

    /// Issue 14: negative or fractional labels were skipped without a word, dropping half of a
    /// -1/1 dataset; they are now counted and refused, strict or not.
    #[test]
    fn negative_and_float_labels_are_counted_and_refused() {
        let f = file(
            ".jsonl",
            b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 0}\n\
              {\"text\": \"c\", \"label\": -1}\n{\"text\": \"d\", \"label\": 1.5}\n\
              {\"text\": \"e\", \"label\": null}\n{\"text\": \"f\", \"label\": 1}\n",
        );
        for strict in [false, true] {
            assert_eq!(
                ClassificationData::load(f.path(), strict).unwrap_err(),
                DataError::BadLabels {
                    path: f.path().display().to_string(),
                    count: 3,
                    line: 3,
                    label: "-1".into(),
                }
            );
        }
        // In CSV every label is text: integers are ids, anything else a class name.
        let csv = file(".csv", b"text,label\na,-1\nb,1\nc,-1\n");
        let data = ClassificationData::load(csv.path(), false).unwrap();
        assert_eq!(data.label_names, vec!["-1", "1"]);
        assert_eq!(data.examples.len(), 3);
    }

    #[test]
    fn tokenizes_truncates_and_batches() {
        let tok = Arc::new(Tokenizer::char_level("abcdefgh ").unwrap());
        let examples = vec![
            ClassificationExample {
                text: "abc".into(),
                label: 1,
            },
            ClassificationExample {
                text: "abcdefgh".into(),
                label: 0,
            },
        ];
        let ds = ClassificationDataset::new(examples, tok, 5).unwrap();
        assert_eq!(ds.get(1).unwrap().input_ids.len(), 5);
        let batch = ClassificationBatcher::new(0).batch(
            vec![ds.get(0).unwrap(), ds.get(1).unwrap()],
            &Device::flex(),
        );
        assert_eq!(batch.input_ids.dims(), [2, 5]);
        let labels: Vec<i64> = batch
            .labels
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(labels, vec![1, 0]);
        let pad: Vec<bool> = batch.padding_mask.to_data().try_into_vec().unwrap();
        assert_eq!(
            pad,
            vec![
                false, false, false, true, true, false, false, false, false, false
            ]
        );
    }
}
