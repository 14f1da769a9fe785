//! Reading raw corpora as a stream of documents: plain text (one document per block of lines,
//! blocks separated by blank lines) or JSONL (one JSON object with a string `text` field per
//! line). Files are read line by line, never whole. Every problem (a file that cannot be
//! opened or read, a line that is not UTF-8, a malformed JSONL line) is reported with its file
//! and line and counted, then skipped, or returned as the error in strict mode.
//!
//! A directory stands for the files under it. Symlinks are followed, but each directory is
//! read once: one reached again (by its resolved path, so a symlink to itself or to a folder
//! above it) is skipped and listed in [`InputReport::issues`], so a cycle of symlinks ends.
//!
//! No line or document is held past [`DOCUMENT_BYTES`]: a longer one is skipped to its end
//! without being buffered, counted in [`InputReport::oversized_documents`] and reported (an
//! error in strict mode). Word counts cannot bound this: a 50 MB line without whitespace is one
//! word, and tokenizing it whole takes gigabytes.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::limits::DOCUMENT_BYTES;

/// How a file's documents are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputFormat {
    /// Blank-line-separated blocks of text.
    Text,
    /// One JSON object with a `text` field per line.
    Jsonl,
}

impl InputFormat {
    /// `.jsonl`/`.json`/`.ndjson` are JSONL; otherwise JSONL if the first non-blank line parses
    /// as a JSON object with a string `text` field, else text.
    pub fn detect(path: &Path, first_line: Option<&str>) -> Self {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if matches!(ext.as_str(), "jsonl" | "json" | "ndjson") {
            return Self::Jsonl;
        }
        let looks_json = first_line.is_some_and(|l| {
            l.trim_start().starts_with('{')
                && serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v.get("text").is_some_and(|t| t.is_string()))
        });
        if looks_json { Self::Jsonl } else { Self::Text }
    }
}

/// Counts of what the reader saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputReport {
    /// Files given (a directory counts as the files under it).
    pub files: usize,
    /// Files that could not be opened or read to the end.
    pub unreadable_files: usize,
    /// Bytes read.
    pub bytes_in: u64,
    /// Lines read.
    pub lines: u64,
    /// Documents produced.
    pub documents: usize,
    /// Lines that were not UTF-8 (the text document holding one is skipped whole).
    pub invalid_utf8_lines: usize,
    /// Text documents skipped because of such a line.
    pub invalid_utf8_documents: usize,
    /// JSONL lines that were not an object with a string `text` field.
    pub malformed_json_lines: usize,
    /// Directories skipped because they had been read already (a symlink cycle, or a folder
    /// given twice).
    pub repeated_directories: usize,
    /// Documents (text blocks or JSONL lines) skipped for holding more than
    /// [`DOCUMENT_BYTES`] bytes.
    #[serde(default)]
    pub oversized_documents: usize,
    /// The first problems, with file and line (at most [`MAX_LISTED_ISSUES`]).
    pub issues: Vec<String>,
}

/// How many problems [`InputReport::issues`] lists (all are counted).
pub const MAX_LISTED_ISSUES: usize = 100;

struct OpenFile {
    path: PathBuf,
    name: String,
    reader: BufReader<File>,
    format: InputFormat,
    line: usize,
    /// A line read while sniffing the format, to hand out first.
    pending: Option<Line>,
}

/// One line as read: its bytes without the line end (empty when it was too long), how many
/// bytes it took in the file, and whether it ran past [`DOCUMENT_BYTES`].
struct Line {
    bytes: Vec<u8>,
    read: u64,
    too_long: bool,
}

/// Reads one line into `buf`, holding at most `max` bytes of it: a longer line is read to its
/// end in the reader's own buffer and dropped (`too_long`, `buf` empty). `read` is 0 at the
/// end of the file.
fn read_line_bounded(
    reader: &mut BufReader<File>,
    buf: &mut Vec<u8>,
    max: u64,
) -> std::io::Result<(u64, bool)> {
    use std::io::Read;
    buf.clear();
    let n = reader.by_ref().take(max + 1).read_until(b'\n', buf)? as u64;
    if n <= max || buf.last() == Some(&b'\n') {
        return Ok((n, false));
    }
    buf.clear();
    let mut read = n;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (used, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        reader.consume(used);
        read += used as u64;
        if end {
            break;
        }
    }
    Ok((read, true))
}

/// An iterator over the documents of several files. Items are `Ok(text)`, or in strict mode
/// the first problem as `Err` (after which the iterator ends).
pub struct DocumentReader {
    files: VecDeque<PathBuf>,
    current: Option<OpenFile>,
    strict: bool,
    failed: bool,
    report: InputReport,
    buf: Vec<u8>,
    /// Whether the line in `buf` ran past [`DOCUMENT_BYTES`] (and `buf` is empty).
    too_long: bool,
    /// [`DOCUMENT_BYTES`] in force.
    max_bytes: u64,
    /// Resolved paths of the directories read so far.
    directories: HashSet<PathBuf>,
}

impl DocumentReader {
    /// Reads `files` in order.
    pub fn new(files: impl IntoIterator<Item = impl Into<PathBuf>>, strict: bool) -> Self {
        let files: VecDeque<PathBuf> = files.into_iter().map(Into::into).collect();
        let report = InputReport {
            files: files.len(),
            ..Default::default()
        };
        Self {
            files,
            current: None,
            strict,
            failed: false,
            report,
            buf: Vec::new(),
            too_long: false,
            max_bytes: DOCUMENT_BYTES.max(),
            directories: HashSet::new(),
        }
    }

    /// The counts so far.
    pub fn report(&self) -> &InputReport {
        &self.report
    }

    /// Records a problem; in strict mode returns it as the error to yield.
    fn issue(&mut self, err: DataError) -> Option<DataError> {
        if self.report.issues.len() < MAX_LISTED_ISSUES {
            self.report.issues.push(err.to_string());
        }
        if self.strict {
            self.failed = true;
            Some(err)
        } else {
            None
        }
    }

    fn open_next(&mut self) -> Option<Result<(), DataError>> {
        let path = self.files.pop_front()?;
        if path.is_dir() {
            // Each directory once, by its resolved path: symlink cycles end here.
            let real = path.canonicalize().unwrap_or_else(|_| path.clone());
            if !self.directories.insert(real) {
                self.report.files -= 1;
                self.report.repeated_directories += 1;
                if self.report.issues.len() < MAX_LISTED_ISSUES {
                    self.report.issues.push(format!(
                        "{}: directory already read (a symlink cycle?), skipped",
                        path.display()
                    ));
                }
                return Some(Ok(()));
            }
            // A directory stands for the files under it, in name order.
            return Some(match std::fs::read_dir(&path) {
                Ok(entries) => {
                    let mut inner: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                    inner.sort();
                    self.report.files += inner.len();
                    self.report.files -= 1;
                    for p in inner.into_iter().rev() {
                        self.files.push_front(p);
                    }
                    Ok(())
                }
                Err(e) => {
                    self.report.unreadable_files += 1;
                    self.issue(DataError::io(&path, e)).map_or(Ok(()), Err)
                }
            });
        }
        let name = path.display().to_string();
        // A device or a pipe would never end (or block): refused before it is opened.
        let file = match kiln_base::files::open_regular(&path).map(|(file, _)| file) {
            Ok(f) => f,
            Err(e) => {
                self.report.unreadable_files += 1;
                return Some(self.issue(DataError::from(e)).map_or(Ok(()), Err));
            }
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        // Sniff the first non-blank line (kept to hand out first).
        let mut first = Vec::new();
        let mut skipped_lines = Vec::new();
        let (read, too_long) = loop {
            match read_line_bounded(&mut reader, &mut first, self.max_bytes) {
                Ok((0, _)) => break (0, false),
                Ok((read, false)) if first.iter().all(|b| b.is_ascii_whitespace()) => {
                    skipped_lines.push(read);
                }
                Ok(line) => break line,
                Err(e) => {
                    self.report.unreadable_files += 1;
                    return Some(self.issue(DataError::io(&path, e)).map_or(Ok(()), Err));
                }
            }
        };
        let first_str = std::str::from_utf8(&first).ok();
        let format = InputFormat::detect(&path, first_str);
        // Blank lines before the first content only separate nothing; count them as read.
        for read in &skipped_lines {
            self.report.bytes_in += read;
            self.report.lines += 1;
        }
        self.current = Some(OpenFile {
            path,
            name,
            reader,
            format,
            line: skipped_lines.len(),
            pending: (read > 0).then_some(Line {
                bytes: first,
                read,
                too_long,
            }),
        });
        Some(Ok(()))
    }

    /// The next raw line of the current file into `self.buf`; `Ok(false)` at its end.
    fn next_line(&mut self) -> Result<bool, DataError> {
        let f = self.current.as_mut().expect("a file is open");
        self.too_long = false;
        let read = if let Some(line) = f.pending.take() {
            self.buf = line.bytes;
            self.too_long = line.too_long;
            line.read
        } else {
            match read_line_bounded(&mut f.reader, &mut self.buf, self.max_bytes) {
                Ok((0, _)) => return Ok(false),
                Ok((read, too_long)) => {
                    self.too_long = too_long;
                    read
                }
                Err(e) => return Err(DataError::io(&f.path, e)),
            }
        };
        f.line += 1;
        self.report.lines += 1;
        self.report.bytes_in += read;
        while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
            self.buf.pop();
        }
        Ok(true)
    }

    fn next_in_file(&mut self) -> Option<Result<String, DataError>> {
        let format = self.current.as_ref()?.format;
        match format {
            InputFormat::Jsonl => self.next_jsonl(),
            InputFormat::Text => self.next_text(),
        }
    }

    fn end_file(&mut self, err: Option<DataError>) -> Option<Result<String, DataError>> {
        self.current = None;
        let err = err?;
        self.report.unreadable_files += 1;
        self.issue(err).map(Err)
    }

    fn next_jsonl(&mut self) -> Option<Result<String, DataError>> {
        loop {
            match self.next_line() {
                Ok(true) => {}
                Ok(false) => return self.end_file(None),
                Err(e) => return self.end_file(Some(e)),
            }
            let f = self.current.as_ref().expect("open");
            let (name, line) = (f.name.clone(), f.line);
            if self.too_long {
                match self.oversized(&name, line) {
                    Some(e) => return Some(Err(e)),
                    None => continue,
                }
            }
            let Ok(s) = std::str::from_utf8(&self.buf) else {
                self.report.invalid_utf8_lines += 1;
                match self.issue(DataError::InvalidUtf8 { path: name, line }) {
                    Some(e) => return Some(Err(e)),
                    None => continue,
                }
            };
            if s.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<serde_json::Value>(s)
                .map_err(|e| e.to_string())
                .and_then(|v| match v.get("text") {
                    Some(serde_json::Value::String(t)) => Ok(t.clone()),
                    _ => Err("no string \"text\" field".to_string()),
                });
            match parsed {
                Ok(text) => {
                    self.report.documents += 1;
                    return Some(Ok(text));
                }
                Err(message) => {
                    self.report.malformed_json_lines += 1;
                    if let Some(e) = self.issue(DataError::MalformedJson {
                        path: name,
                        line,
                        message,
                    }) {
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    fn next_text(&mut self) -> Option<Result<String, DataError>> {
        let mut doc = String::new();
        let mut bad_line: Option<usize> = None;
        // The line at which the document ran past DOCUMENT_BYTES.
        let mut too_long: Option<usize> = None;
        loop {
            let more = match self.next_line() {
                Ok(m) => m,
                Err(e) => return self.end_file(Some(e)),
            };
            let blank = !more || self.buf.iter().all(|b| b.is_ascii_whitespace());
            if blank && !self.too_long {
                if let Some(line) = too_long.take() {
                    bad_line = None;
                    doc.clear();
                    let name = self.current.as_ref().expect("open").name.clone();
                    if let Some(e) = self.oversized(&name, line) {
                        return Some(Err(e));
                    }
                } else if let Some(line) = bad_line.take() {
                    self.report.invalid_utf8_documents += 1;
                    let name = self.current.as_ref().expect("open").name.clone();
                    doc.clear();
                    if let Some(e) = self.issue(DataError::InvalidUtf8 { path: name, line }) {
                        return Some(Err(e));
                    }
                } else if !doc.is_empty() {
                    self.report.documents += 1;
                    if !more {
                        self.current = None;
                    }
                    return Some(Ok(doc));
                }
                if !more {
                    return self.end_file(None);
                }
                continue;
            }
            let line = self.current.as_ref().expect("open").line;
            let added = self.buf.len() + usize::from(!doc.is_empty());
            if self.too_long || (doc.len() + added) as u64 > self.max_bytes {
                too_long.get_or_insert(line);
                doc.clear();
                continue;
            }
            match std::str::from_utf8(&self.buf) {
                Ok(s) if bad_line.is_none() && too_long.is_none() => {
                    if !doc.is_empty() {
                        doc.push('\n');
                    }
                    doc.push_str(s);
                }
                Ok(_) => {}
                Err(_) => {
                    self.report.invalid_utf8_lines += 1;
                    bad_line.get_or_insert(self.current.as_ref().expect("open").line);
                }
            }
        }
    }
}

impl DocumentReader {
    /// Counts and reports a document past [`DOCUMENT_BYTES`] at `name:line`; in strict mode
    /// returns the error to yield.
    fn oversized(&mut self, name: &str, line: usize) -> Option<DataError> {
        self.report.oversized_documents += 1;
        let err = DOCUMENT_BYTES
            .check(
                &format!(
                    "the length in bytes of the document at {name}:{line} (read up to the ceiling)"
                ),
                self.max_bytes + 1,
            )
            .expect_err("one byte past the ceiling is refused");
        self.issue(DataError::Limit(err))
    }
}

impl Iterator for DocumentReader {
    type Item = Result<String, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if self.current.is_none() {
                match self.open_next()? {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if let Some(item) = self.next_in_file() {
                return Some(item);
            }
        }
    }
}

/// A text file read whole (a program's `--data FILE`): a regular file of at most
/// `TEXT_FILE_BYTES` (64 MiB unless raised with `KILN_LIMIT_TEXT_FILE_BYTES`; larger corpora go
/// through `prepare_data` and shards), in UTF-8 (the first bad line is named).
pub fn read_text_file(path: impl AsRef<Path>) -> Result<String, DataError> {
    let path = path.as_ref();
    let bytes = kiln_base::limits::read_bounded(path, &kiln_base::limits::TEXT_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        DataError::InvalidUtf8 {
            path: path.display().to_string(),
            line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
        }
    })
}

/// Reads a whole file's documents (for small inputs and tests).
pub fn read_documents(
    path: impl AsRef<Path>,
    strict: bool,
) -> Result<(Vec<String>, InputReport), DataError> {
    let mut reader = DocumentReader::new([path.as_ref()], strict);
    let docs = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok((docs, reader.report().clone()))
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

    /// Issue 14: a 50 MB line without whitespace was one "word", passed `max_words` and took
    /// gigabytes to tokenize. Lines and documents past DOCUMENT_BYTES are skipped unread and
    /// counted; the documents around them are kept.
    #[test]
    fn documents_past_the_byte_ceiling_are_skipped_and_counted() {
        let max = DOCUMENT_BYTES.max() as usize;
        let long_line = "x".repeat(max + 10);
        let mut text = format!("first doc\n\n{long_line}\n\nthird\n\n");
        // A block of short lines that only together pass the ceiling.
        let line = "y".repeat(1 << 20);
        for _ in 0..(max >> 20) + 1 {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str("\nlast\n");
        let f = file(".txt", text.as_bytes());
        let (docs, report) = read_documents(f.path(), false).unwrap();
        assert_eq!(docs, vec!["first doc", "third", "last"]);
        assert_eq!(report.oversized_documents, 2);
        assert_eq!(report.bytes_in, text.len() as u64);
        assert!(
            report.issues[0].contains(":3 (read up to the ceiling)"),
            "{:?}",
            report.issues
        );

        // A JSONL line, and one first in its file (read while sniffing the format).
        let jsonl = format!("{{\"text\": \"{long_line}\"}}\n{{\"text\": \"kept\"}}\n");
        let f = file(".jsonl", jsonl.as_bytes());
        let (docs, report) = read_documents(f.path(), false).unwrap();
        assert_eq!(
            (docs, report.oversized_documents),
            (vec!["kept".to_string()], 1)
        );
        assert!(matches!(
            read_documents(f.path(), true),
            Err(DataError::Limit(_))
        ));
    }

    #[test]
    fn text_blocks_are_documents_and_bad_utf8_is_counted() {
        let f = file(
            ".txt",
            b"\n\nfirst doc\nsecond line\n\n\n\nsecond \xff doc\nmore\n  \nthird\r\n",
        );
        let (docs, report) = read_documents(f.path(), false).unwrap();
        assert_eq!(docs, vec!["first doc\nsecond line", "third"]);
        assert_eq!(report.invalid_utf8_lines, 1);
        assert_eq!(report.invalid_utf8_documents, 1);
        assert_eq!(report.documents, 2);
        assert_eq!(report.bytes_in, std::fs::metadata(f.path()).unwrap().len());
        assert!(
            report.issues[0].ends_with(":8: invalid UTF-8"),
            "{:?}",
            report.issues
        );
        let err = read_documents(f.path(), true).unwrap_err();
        assert!(
            matches!(err, DataError::InvalidUtf8 { line: 8, .. }),
            "{err}"
        );
    }

    #[test]
    fn jsonl_by_extension_or_content_with_malformed_lines() {
        let body = b"{\"text\": \"one\"}\n{\"text\": 5}\nnot json\n\n{\"text\": \"two\", \"id\": 3}\n\xff\n";
        for ext in [".jsonl", ".data"] {
            let f = file(ext, body);
            let (docs, report) = read_documents(f.path(), false).unwrap();
            assert_eq!(docs, vec!["one", "two"], "{ext}");
            assert_eq!(report.malformed_json_lines, 2);
            assert_eq!(report.invalid_utf8_lines, 1);
            assert!(
                report.issues[0].contains(":2: malformed JSON line"),
                "{:?}",
                report.issues
            );
        }
    }

    #[test]
    fn directories_stand_for_their_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "second\n").unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"text\": \"first\"}\n").unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), "third\n\nfourth").unwrap();
        let mut reader = DocumentReader::new([dir.path()], true);
        let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(docs, vec!["first", "second", "third", "fourth"]);
        assert_eq!(reader.report().files, 3);
    }

    /// Issue 14: a directory with two symlinks to itself made `prepare_data` run forever.
    #[test]
    fn directory_with_two_symlinks_to_itself_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("doc.txt"), "only once\n").unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("sub/up")).unwrap();
        let mut reader = DocumentReader::new([dir.path()], true);
        let docs: Vec<_> = reader.by_ref().take(10).collect::<Result<_, _>>().unwrap();
        assert_eq!(docs, vec!["only once"]);
        assert!(reader.next().is_none());
        assert_eq!(reader.report().repeated_directories, 3);
        assert_eq!(reader.report().files, 1);
    }

    #[test]
    fn unreadable_files_are_reported_and_the_rest_is_read() {
        let good = file(".txt", b"kept\n");
        let mut reader = DocumentReader::new(
            [
                PathBuf::from("/nonexistent/corpus.txt"),
                good.path().to_path_buf(),
            ],
            false,
        );
        let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(docs, vec!["kept"]);
        assert_eq!(reader.report().unreadable_files, 1);
        let mut strict = DocumentReader::new([PathBuf::from("/nonexistent/corpus.txt")], true);
        assert!(matches!(strict.next(), Some(Err(DataError::Io { .. }))));
        assert!(strict.next().is_none());
    }
}
