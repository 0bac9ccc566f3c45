//! Labelled data files: CSV/TSV/JSONL for sequence (and pair) classification, CoNLL/JSONL for
//! token classification. Every error names the file and the line.

use std::path::Path;

use crate::error::{file_err, Result};

/// One training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// Sequence or pair classification (`text_pair` = the candidate response for dialogue pairs).
    Seq { text: String, text_pair: Option<String>, label: String },
    /// Token classification: words and one BIO tag per word.
    Tokens { words: Vec<String>, tags: Vec<String> },
}

impl Example {
    pub fn labels(&self) -> Vec<&str> {
        match self {
            Example::Seq { label, .. } => vec![label.as_str()],
            Example::Tokens { tags, .. } => tags.iter().map(|s| s.as_str()).collect(),
        }
    }
}

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
    let path = path.as_ref();
    let text = read(path)?;
    let mut out = Vec::new();
    match ext(path).as_str() {
        "jsonl" | "json" => {
            for (line, v) in json_lines(path, &text)? {
                let field = |k: &str| -> Option<String> {
                    match v.get(k)? {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        serde_json::Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    }
                };
                let (Some(t), Some(label)) = (field("text"), field("label")) else {
                    return file_err(path, format!("line {line}: needs string fields \"text\" and \"label\" (found {})", keys(&v)));
                };
                out.push(Example::Seq { text: t, text_pair: field("text_pair"), label });
            }
        }
        e @ ("csv" | "tsv") => {
            let delim = if e == "csv" { ',' } else { '\t' };
            let table = Table::parse(path, &text, delim)?;
            let (Some(ti), Some(li)) = (table.col("text"), table.col("label")) else {
                return file_err(path, format!("the header must name the columns \"text\" and \"label\" (found {:?})", table.header));
            };
            let pi = table.col("text_pair");
            for (_, r) in table.records(path)? {
                out.push(Example::Seq { text: r[ti].clone(), text_pair: pi.map(|p| r[p].clone()), label: r[li].trim().to_string() });
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
                let pair = v.get("text_pair").and_then(|p| p.as_str()).map(str::to_string);
                let t = match (v.get("text"), v.get("tokens")) {
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
            let Some(ti) = table.col("text") else {
                return file_err(path, format!("the header must name a \"text\" column (found {:?})", table.header));
            };
            let pi = table.col("text_pair");
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

/// Token-classification examples from CoNLL (`.conll`, `.txt`, `.bio`, `.tsv`: one token per
/// line, the tag in the last column, a blank line between sentences, `-DOCSTART-` lines skipped)
/// or `.jsonl` (`{"tokens": [...], "tags": [...]}`).
pub fn load_token_classification(path: impl AsRef<Path>) -> Result<Vec<Example>> {
    let path = path.as_ref();
    let text = read(path)?;
    let mut out = Vec::new();
    if matches!(ext(path).as_str(), "jsonl" | "json") {
        for (line, v) in json_lines(path, &text)? {
            let strings = |k: &str| -> Option<Vec<String>> { v.get(k)?.as_array()?.iter().map(|x| x.as_str().map(String::from)).collect() };
            let (Some(words), Some(tags)) = (strings("tokens"), strings("tags").or_else(|| strings("ner_tags"))) else {
                return file_err(path, format!("line {line}: needs string arrays \"tokens\" and \"tags\" (found {})", keys(&v)));
            };
            if words.len() != tags.len() {
                return file_err(path, format!("line {line}: {} tokens but {} tags", words.len(), tags.len()));
            }
            if !words.is_empty() {
                out.push(Example::Tokens { words, tags });
            }
        }
    } else {
        let (mut words, mut tags) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() {
                if !words.is_empty() {
                    out.push(Example::Tokens { words: std::mem::take(&mut words), tags: std::mem::take(&mut tags) });
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
            out.push(Example::Tokens { words, tags });
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
        assert!(matches!(&ex[0], Example::Seq { text, label, .. } if text == "hello" && label == "pos"));
        let p = dir.join("glue.jsonl");
        std::fs::write(&p, "{\"sentence\": \"a\", \"label\": 1}\n").unwrap();
        let e = load_classification(&p).unwrap_err().to_string();
        assert!(e.contains("glue.jsonl") && e.contains("line 1") && e.contains("sentence: string, label: number"), "{e}");
        let p = dir.join("ner.jsonl");
        std::fs::write(&p, "{\"tokens\": [\"a\"], \"ner_tags\": [3]}\n").unwrap();
        let e = load_token_classification(&p).unwrap_err().to_string();
        assert!(e.contains("tokens: array of strings, ner_tags: array)"), "{e}");
    }
}
