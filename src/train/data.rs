//! Labelled data files: CSV/TSV/JSONL for sequence (and pair) classification, CoNLL/JSONL for
//! token classification. Every error names the file and the line.

use std::path::Path;

use crate::error::{file_err, Result};

/// What a sequence example is labelled with.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One class (`classify`, `pair`).
    Class(String),
    /// Any number of classes, none included (`multilabel`).
    Labels(Vec<String>),
    /// A real number (`regression`).
    Score(f64),
}

/// Which kind of [`Target`] a sequence data file holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetKind {
    Class,
    /// Labels in a JSON array, or in one string field separated by `sep`.
    Labels { sep: char },
    Score,
}

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// Sequence or pair classification (`text_pair` = the candidate response for dialogue pairs).
    Seq { text: String, text_pair: Option<String>, target: Target },
    /// Token classification: words and one BIO tag per word. Only the `scored` words' tags are
    /// labels (all of them as loaded); the rest are context, in a window of a longer input
    /// (see `windows`).
    Tokens { words: Vec<String>, tags: Vec<String>, scored: std::ops::Range<usize> },
}

impl Example {
    /// A token-classification example labelling all its words.
    pub fn tokens(words: Vec<String>, tags: Vec<String>) -> Example {
        let scored = 0..words.len();
        Example::Tokens { words, tags, scored }
    }

    /// Every label of the example, mutably (the class, each of a label set, each word's tag).
    fn labels_mut(&mut self) -> Vec<&mut String> {
        match self {
            Example::Seq { target: Target::Class(l), .. } => vec![l],
            Example::Seq { target: Target::Labels(ls), .. } => ls.iter_mut().collect(),
            Example::Seq { target: Target::Score(_), .. } => Vec::new(),
            Example::Tokens { tags, .. } => tags.iter_mut().collect(),
        }
    }

    /// The class names the example uses (none for a regression score).
    pub fn labels(&self) -> Vec<&str> {
        match self {
            Example::Seq { target: Target::Class(l), .. } => vec![l.as_str()],
            Example::Seq { target: Target::Labels(ls), .. } => ls.iter().map(|s| s.as_str()).collect(),
            Example::Seq { target: Target::Score(_), .. } => Vec::new(),
            Example::Tokens { tags, .. } => tags.iter().map(|s| s.as_str()).collect(),
        }
    }
}

/// A label field as text (string, number or bool), as classify reads it.
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn split_labels(s: &str, sep: char) -> Vec<String> {
    s.split(sep).map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// A regression score from its text: a finite number.
fn score(path: &Path, line: usize, s: &str) -> Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => file_err(path, format!("line {line}: label \"{}\" is not a finite number (the regression task needs a real-valued label)", s.trim())),
    }
}

/// The target of a JSON line's label value.
fn json_target(path: &Path, line: usize, v: &serde_json::Value, kind: TargetKind) -> Result<Option<Target>> {
    Ok(match kind {
        TargetKind::Class => scalar(v).map(Target::Class),
        TargetKind::Labels { sep } => match v {
            serde_json::Value::Array(a) => {
                let ls: Option<Vec<String>> = a.iter().map(scalar).collect();
                match ls {
                    Some(ls) => Some(Target::Labels(ls)),
                    None => return file_err(path, format!("line {line}: the labels array must hold strings or numbers")),
                }
            }
            other => scalar(other).map(|s| Target::Labels(split_labels(&s, sep))),
        },
        TargetKind::Score => match v {
            serde_json::Value::Number(n) => Some(Target::Score(score(path, line, &n.to_string())?)),
            serde_json::Value::String(s) => Some(Target::Score(score(path, line, s)?)),
            _ => None,
        },
    })
}

/// The text column(s) of a sequence file, from the names it has: ours (`text`, optional
/// `text_pair`), else the GLUE names transformers' run_glue knows (`sentence1`/`sentence2`,
/// `premise`/`hypothesis`, `question1`/`question2`, `question`/`sentence`, `sentence`), so an
/// exported HF dataset reads as it is.
fn text_columns(has: impl Fn(&str) -> bool) -> Option<(&'static str, Option<&'static str>)> {
    if has("text") {
        return Some(("text", has("text_pair").then_some("text_pair")));
    }
    for (a, b) in [("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence")] {
        if has(a) && has(b) {
            return Some((a, Some(b)));
        }
    }
    has("sentence").then_some(("sentence", None))
}

/// What `text_columns` accepts, for errors.
const TEXT_COLUMNS: &str = "\"text\" (optional \"text_pair\"), or GLUE's \"sentence\", \"sentence1\"/\"sentence2\", \"premise\"/\"hypothesis\", \"question1\"/\"question2\", \"question\"/\"sentence\"";

fn read(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        // A UTF-8 byte-order mark (spreadsheet exports) is not part of the first column's name.
        Ok(t) => Ok(t.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(t)),
        Err(e) => file_err(path, format!("cannot read: {e}")),
    }
}

/// Records of a CSV/TSV text with RFC 4180 quoting (quoted fields may hold the delimiter, `""`
/// and newlines). Returns (line number where the record starts, fields).
fn parse_delimited(path: &Path, text: &str, delim: char) -> Result<Vec<(usize, Vec<String>)>> {
    let mut out = Vec::new();
    let (mut field, mut rec) = (String::new(), Vec::new());
    let (mut in_quotes, mut line, mut start_line, mut at_field_start) = (false, 1usize, 1usize, true);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                at_field_start = false;
            }
            c if c == delim => {
                rec.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {}
            '\n' => {
                rec.push(std::mem::take(&mut field));
                if !(rec.len() == 1 && rec[0].is_empty()) {
                    out.push((start_line, std::mem::take(&mut rec)));
                }
                rec.clear();
                line += 1;
                start_line = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        return file_err(path, format!("line {start_line}: a quoted field is never closed"));
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(field);
        out.push((start_line, rec));
    }
    Ok(out)
}

/// The keys of a JSON line and their kinds, for error messages: `text: null, label: string`.
/// The objects of a JSON Lines text: (1-based line number, value) for every non-blank line.
fn json_lines(path: &Path, text: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push((i + 1, v)),
            Err(e) => return file_err(path, format!("line {}: not valid JSON: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// A CSV/TSV table: the header row and the records after it.
struct Table {
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn parse(path: &Path, text: &str, delim: char) -> Result<Table> {
        let mut rows = parse_delimited(path, text, delim)?.into_iter();
        let Some((_, header)) = rows.next() else { return file_err(path, "empty file (expected a header row)") };
        Ok(Table { header, rows: rows.collect() })
    }

    /// The column named `name` (case-insensitive, surrounding spaces ignored).
    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h.trim().eq_ignore_ascii_case(name))
    }

    /// The records, each checked to have the header's number of fields.
    fn records(&self, path: &Path) -> Result<&[(usize, Vec<String>)]> {
        for (line, r) in &self.rows {
            if r.len() != self.header.len() {
                return file_err(path, format!("line {line}: {} fields, the header has {}", r.len(), self.header.len()));
            }
        }
        Ok(&self.rows)
    }
}

fn keys(v: &serde_json::Value) -> String {
    let Some(o) = v.as_object() else { return "not an object".into() };
    let kind = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(a) if a.iter().all(|e| e.is_string()) => "array of strings",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    if o.is_empty() {
        return "no fields".into();
    }
    o.iter().map(|(k, x)| format!("{k}: {}", kind(x))).collect::<Vec<_>>().join(", ")
}

fn ext(path: &Path) -> String {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// Sequence-classification examples from `.csv`, `.tsv` (header with `text`, `label`, optional
/// `text_pair`) or `.jsonl` (objects with the same keys; `label` may be a string or an integer).
pub fn load_classification(path: impl AsRef<Path>) -> Result<Vec<Example>> {
    load_sequences(path, TargetKind::Class)
}

/// Sequence examples with targets of `kind`: the files of [`load_classification`]; for
/// multi-label data the column may also be called `labels`, and holds the labels separated by
/// `sep` (or, in JSONL, an array); for regression the label is a number.
pub fn load_sequences(path: impl AsRef<Path>, kind: TargetKind) -> Result<Vec<Example>> {
    let path = path.as_ref();
    let text = read(path)?;
    let mut out = Vec::new();
    let label_keys: &[&str] = if matches!(kind, TargetKind::Labels { .. }) { &["label", "labels"] } else { &["label"] };
    let what = match kind {
        TargetKind::Class => "a string \"label\"",
        TargetKind::Labels { .. } => "a \"label\" (or \"labels\") array or string",
        TargetKind::Score => "a number \"label\"",
    };
    match ext(path).as_str() {
        "jsonl" | "json" => {
            for (line, v) in json_lines(path, &text)? {
                let cols = text_columns(|k| v.get(k).is_some());
                let t = cols.and_then(|(a, _)| v.get(a)).and_then(scalar);
                let label = label_keys.iter().find_map(|k| v.get(*k));
                let target = match label {
                    Some(l) => json_target(path, line, l, kind)?,
                    None => None,
                };
                let (Some(t), Some(target)) = (t, target) else {
                    return file_err(path, format!("line {line}: needs a string {TEXT_COLUMNS}, and {what} (found {})", keys(&v)));
                };
                let text_pair = cols.and_then(|(_, b)| v.get(b?)).and_then(scalar);
                out.push(Example::Seq { text: t, text_pair, target });
            }
        }
        e @ ("csv" | "tsv") => {
            let delim = if e == "csv" { ',' } else { '\t' };
            let table = Table::parse(path, &text, delim)?;
            let cols = text_columns(|k| table.col(k).is_some());
            let (Some(ti), Some(li)) = (cols.and_then(|(a, _)| table.col(a)), label_keys.iter().find_map(|k| table.col(k))) else {
                return file_err(path, format!("the header must name the text column(s), {TEXT_COLUMNS}, and \"{}\" (found {:?})", label_keys.join("\" or \""), table.header));
            };
            let pi = cols.and_then(|(_, b)| table.col(b?));
            for (line, r) in table.records(path)? {
                let l = r[li].trim();
                let target = match kind {
                    TargetKind::Class => Target::Class(l.to_string()),
                    TargetKind::Labels { sep } => Target::Labels(split_labels(l, sep)),
                    TargetKind::Score => Target::Score(score(path, *line, l)?),
                };
                out.push(Example::Seq { text: r[ti].clone(), text_pair: pi.map(|p| r[p].clone()), target });
            }
        }
        "" => return file_err(path, "has no extension: classification data must be .csv, .tsv or .jsonl (NER: .conll or .jsonl)"),
        other => return file_err(path, format!("unknown extension \".{other}\" for classification data (csv, tsv, jsonl; NER: conll, jsonl)")),
    }
    if out.is_empty() {
        return file_err(path, "no examples");
    }
    Ok(out)
}

/// Inputs to predict or embed, from a file: `.jsonl`/`.json` objects with `text` (or NER's
/// `tokens`, joined by spaces) and optional `text_pair`; `.csv`/`.tsv` with a `text` column (and
/// optional `text_pair`) — the training formats, labels ignored; any other file one text per line.
/// A pair becomes `text<TAB>text_pair`, as pair models take it on the command line.
pub fn load_texts(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = read(path)?;
    let joined = |t: String, pair: Option<String>| match pair {
        Some(p) => format!("{t}\t{p}"),
        None => t,
    };
    let mut out = Vec::new();
    match ext(path).as_str() {
        "jsonl" | "json" => {
            for (line, v) in json_lines(path, &text)? {
                let cols = text_columns(|k| v.get(k).is_some());
                let pair = cols.and_then(|(_, b)| v.get(b?)).and_then(|p| p.as_str()).map(str::to_string);
                let t = match (cols.and_then(|(a, _)| v.get(a)), v.get("tokens")) {
                    (Some(serde_json::Value::String(t)), _) => t.clone(),
                    (None, Some(serde_json::Value::Array(words))) if words.iter().all(|w| w.is_string()) => {
                        words.iter().filter_map(|w| w.as_str()).collect::<Vec<_>>().join(" ")
                    }
                    _ => return file_err(path, format!("line {line}: needs a string \"text\" or a \"tokens\" list of strings (found {})", keys(&v))),
                };
                out.push(joined(t, pair));
            }
        }
        e @ ("csv" | "tsv") => {
            let delim = if e == "csv" { ',' } else { '\t' };
            let table = Table::parse(path, &text, delim)?;
            let cols = text_columns(|k| table.col(k).is_some());
            let Some(ti) = cols.and_then(|(a, _)| table.col(a)) else {
                return file_err(path, format!("the header must name the text column(s), {TEXT_COLUMNS} (found {:?})", table.header));
            };
            let pi = cols.and_then(|(_, b)| table.col(b?));
            for (_, r) in table.records(path)? {
                out.push(joined(r[ti].clone(), pi.map(|p| r[p].clone())));
            }
        }
        _ => out = text.lines().map(str::to_string).collect(),
    }
    if out.is_empty() {
        return file_err(path, "no texts");
    }
    Ok(out)
}

/// True when the examples have labels and every one is a non-negative integer (class ids, as an
/// HF datasets export writes a `ClassLabel` column such as `ner_tags`).
pub fn integer_labels(ex: &[Example]) -> bool {
    let mut labels = ex.iter().flat_map(|e| e.labels()).peekable();
    labels.peek().is_some() && labels.all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// Integer labels (class ids) replaced by their names: id i becomes `names[i]` (the dataset's
/// `ClassLabel` names, in order). A label that is not an id below `names.len()` is an error
/// naming `path`.
pub fn name_labels(ex: &mut [Example], names: &[String], path: &Path) -> Result<()> {
    for e in ex.iter_mut() {
        for l in e.labels_mut() {
            match l.parse::<usize>().ok().and_then(|i| names.get(i)) {
                Some(n) => *l = n.clone(),
                None => {
                    return file_err(path, format!("label \"{l}\" is not a class id in 0..{} of the label names ({})", names.len(), names.join(", ")));
                }
            }
        }
    }
    Ok(())
}

/// Token-classification examples from CoNLL (`.conll`, `.txt`, `.bio`, `.tsv`: one token per
/// line, the tag in the last column, a blank line between sentences, `-DOCSTART-` lines skipped)
/// or `.jsonl` (`{"tokens": [...], "tags": [...]}`; `ner_tags` for `tags`, and integer class ids
/// for tag names as an HF datasets export writes them, read as their decimal text: see
/// [`name_labels`]).
pub fn load_token_classification(path: impl AsRef<Path>) -> Result<Vec<Example>> {
    let path = path.as_ref();
    let text = read(path)?;
    let mut out = Vec::new();
    if matches!(ext(path).as_str(), "jsonl" | "json") {
        for (line, v) in json_lines(path, &text)? {
            let strings = |k: &str| -> Option<Vec<String>> { v.get(k)?.as_array()?.iter().map(|x| x.as_str().map(String::from)).collect() };
            let ids = |k: &str| -> Option<Vec<String>> { v.get(k)?.as_array()?.iter().map(|x| x.as_str().map(String::from).or_else(|| x.as_u64().map(|n| n.to_string()))).collect() };
            let (Some(words), Some(tags)) = (strings("tokens"), ids("tags").or_else(|| ids("ner_tags"))) else {
                return file_err(path, format!("line {line}: needs a string array \"tokens\" and an array \"tags\" of tag names or class ids (found {})", keys(&v)));
            };
            if words.len() != tags.len() {
                return file_err(path, format!("line {line}: {} tokens but {} tags", words.len(), tags.len()));
            }
            if !words.is_empty() {
                out.push(Example::tokens(words, tags));
            }
        }
    } else {
        let (mut words, mut tags) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() {
                if !words.is_empty() {
                    out.push(Example::tokens(std::mem::take(&mut words), std::mem::take(&mut tags)));
                }
                continue;
            }
            if t.starts_with("-DOCSTART-") {
                continue;
            }
            let cols: Vec<&str> = t.split(['\t', ' ']).filter(|c| !c.is_empty()).collect();
            if cols.len() < 2 {
                return file_err(path, format!("line {}: expected a token and a tag, got \"{t}\"", i + 1));
            }
            let tag = cols[cols.len() - 1];
            if tag != "O" && !(tag.starts_with("B-") || tag.starts_with("I-")) {
                return file_err(path, format!("line {}: tag \"{tag}\" is not BIO (O, B-TYPE, I-TYPE)", i + 1));
            }
            words.push(cols[0].to_string());
            tags.push(tag.to_string());
        }
        if !words.is_empty() {
            out.push(Example::tokens(words, tags));
        }
    }
    if out.is_empty() {
        return file_err(path, "no sentences");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_errors() {
        let p = Path::new("x.csv");
        let rows = parse_delimited(p, "text,label\n\"a, \"\"b\"\"\nc\",pos\nplain,neg\n", ',').unwrap();
        assert_eq!(rows[1].1, vec!["a, \"b\"\nc".to_string(), "pos".into()]);
        assert_eq!(rows[2], (4, vec!["plain".to_string(), "neg".into()]));
        let e = parse_delimited(p, "text,label\n\"open,neg\n", ',').unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains("never closed"), "{e}");
    }

    #[test]
    fn bom_is_stripped_and_json_errors_list_the_fields() {
        let dir = std::env::temp_dir().join(format!("engram-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bom.csv");
        std::fs::write(&p, "\u{feff}text,label\r\nhello,pos\r\n").unwrap();
        let ex = load_classification(&p).unwrap();
        assert!(matches!(&ex[0], Example::Seq { text, target: Target::Class(label), .. } if text == "hello" && label == "pos"));
        let p = dir.join("glue.jsonl");
        std::fs::write(&p, "{\"sentence\": \"a\", \"label\": 1}\n{\"sentences\": \"a\", \"label\": 1}\n").unwrap();
        let e = load_classification(&p).unwrap_err().to_string();
        assert!(e.contains("glue.jsonl") && e.contains("line 2") && e.contains("sentences: string, label: number") && e.contains("\"sentence1\""), "{e}");
        let p = dir.join("ner.jsonl");
        std::fs::write(&p, "{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [3, 0]}\n").unwrap();
        let mut ex = load_token_classification(&p).unwrap();
        assert!(matches!(&ex[0], Example::Tokens { tags, .. } if tags == &["3", "0"]));
        assert!(integer_labels(&ex));
        let names: Vec<String> = ["O", "B-PER", "I-PER", "B-LOC"].map(String::from).to_vec();
        name_labels(&mut ex, &names, &p).unwrap();
        assert!(matches!(&ex[0], Example::Tokens { tags, .. } if tags == &["B-LOC", "O"]));
        assert!(!integer_labels(&ex));
        let mut ex = load_token_classification(&p).unwrap();
        let e = name_labels(&mut ex, &names[..3], &p).unwrap_err().to_string();
        assert!(e.contains("ner.jsonl") && e.contains("\"3\" is not a class id in 0..3"), "{e}");
        std::fs::write(&p, "{\"tokens\": [\"a\"], \"ner_tags\": [-1]}\n").unwrap();
        let e = load_token_classification(&p).unwrap_err().to_string();
        assert!(e.contains("ner.jsonl") && e.contains("line 1") && e.contains("tokens: array of strings, ner_tags: array)"), "{e}");
    }

    /// Files exported from HF datasets keep GLUE's column names; they read as ours do, in
    /// training and prediction, with `text` winning where a file has both.
    #[test]
    fn glue_column_names_are_read_as_text_and_text_pair() {
        let dir = std::env::temp_dir().join(format!("engram-data-glue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let seq = |text: &str, pair: Option<&str>, label: &str| Example::Seq { text: text.into(), text_pair: pair.map(String::from), target: Target::Class(label.into()) };
        let cases: [(&str, &str, Example); 7] = [
            ("cola.jsonl", "{\"sentence\": \"a b\", \"label\": 1, \"idx\": 0}\n", seq("a b", None, "1")),
            ("mrpc.jsonl", "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 0}\n", seq("a", Some("b"), "0")),
            ("mnli.jsonl", "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": 2}\n", seq("p", Some("h"), "2")),
            ("qqp.jsonl", "{\"question1\": \"q1\", \"question2\": \"q2\", \"label\": 1}\n", seq("q1", Some("q2"), "1")),
            ("qnli.jsonl", "{\"question\": \"q\", \"sentence\": \"s\", \"label\": \"entailment\"}\n", seq("q", Some("s"), "entailment")),
            ("rte.csv", "idx,sentence1,sentence2,label\n0,x y,z,1\n", seq("x y", Some("z"), "1")),
            ("ours.tsv", "sentence\ttext\tlabel\nnot this\tthis\tpos\n", seq("this", None, "pos")),
        ];
        for (name, body, want) in cases {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            let ex = load_classification(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ex, vec![want.clone()], "{name}");
            let Example::Seq { text, text_pair, .. } = want else { unreachable!() };
            let joined = match text_pair { Some(p) => format!("{text}\t{p}"), None => text };
            assert_eq!(load_texts(&p).unwrap(), vec![joined], "{name}");
        }
        let p = dir.join("half.csv");
        std::fs::write(&p, "sentence1,label\nx,1\n").unwrap();
        let e = load_classification(&p).unwrap_err().to_string();
        assert!(e.contains("half.csv") && e.contains("\"sentence1\"/\"sentence2\"") && e.contains("[\"sentence1\", \"label\"]"), "{e}");
    }

    #[test]
    fn multilabel_and_score_targets() {
        let dir = std::env::temp_dir().join(format!("engram-data-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let labels = |ex: &[Example]| -> Vec<Vec<String>> { ex.iter().map(|e| e.labels().iter().map(|s| s.to_string()).collect()).collect() };
        let p = dir.join("m.tsv");
        std::fs::write(&p, "text\tlabels\nx\tjoy| anger\ny\t\n").unwrap();
        let ex = load_sequences(&p, TargetKind::Labels { sep: '|' }).unwrap();
        assert_eq!(labels(&ex), vec![vec!["joy".to_string(), "anger".into()], vec![]]);
        let p = dir.join("m.jsonl");
        std::fs::write(&p, "{\"text\": \"x\", \"labels\": [\"a\", 3]}\n{\"text\": \"y\", \"label\": \"b,c\"}\n").unwrap();
        let ex = load_sequences(&p, TargetKind::Labels { sep: ',' }).unwrap();
        assert_eq!(labels(&ex), vec![vec!["a".to_string(), "3".into()], vec!["b".into(), "c".into()]]);
        let p = dir.join("r.jsonl");
        std::fs::write(&p, "{\"text\": \"x\", \"label\": -2.5e-1, \"text_pair\": \"z\"}\n{\"text\": \"y\", \"label\": \" 4 \"}\n").unwrap();
        let ex = load_sequences(&p, TargetKind::Score).unwrap();
        assert_eq!(ex[0], Example::Seq { text: "x".into(), text_pair: Some("z".into()), target: Target::Score(-0.25) });
        assert!(matches!(ex[1], Example::Seq { target: Target::Score(x), .. } if x == 4.0));
        let p = dir.join("r.csv");
        std::fs::write(&p, "text,label\nx,inf\n").unwrap();
        let e = load_sequences(&p, TargetKind::Score).unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("line 2") && e.contains("\"inf\" is not a finite number"), "{e}");
    }
}
