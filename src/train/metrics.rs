//! Evaluation metrics: accuracy, per-label precision/recall/F1 with support (a classification
//! report), macro F1, and entity-level precision/recall/F1 for BIO tags with conlleval semantics
//! (an entity counts only if its type and both boundaries match); for multi-label data the
//! per-label report with micro and macro averages and subset accuracy (scikit-learn's
//! definitions); for regression MSE, MAE, Pearson's r and Spearman's ρ.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

fn prf(tp: usize, pred: usize, gold: usize) -> Prf {
    let p = if pred == 0 { 0.0 } else { tp as f64 / pred as f64 };
    let r = if gold == 0 { 0.0 } else { tp as f64 / gold as f64 };
    let f = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    Prf { precision: p, recall: r, f1: f, support: gold }
}

/// Label-level metrics (sequence classification, or token tags flattened): scikit-learn's
/// `classification_report` (per label, macro and support-weighted averages) and
/// `confusion_matrix`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_label: BTreeMap<String, Prf>,
    pub total: usize,
    /// Unweighted means over the labels present in gold or predictions (`macro avg`).
    pub macro_avg: Prf,
    /// Means weighted by each label's gold support (`weighted avg`).
    pub weighted_avg: Prf,
    /// `confusion[g][p]`: examples of gold label g predicted as p, labels in model order.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
}

pub fn classification_report(gold: &[usize], pred: &[usize], labels: &[String]) -> Report {
    let n = labels.len();
    let (mut tp, mut np, mut ng) = (vec![0; n], vec![0; n], vec![0; n]);
    let mut correct = 0;
    for (&g, &p) in gold.iter().zip(pred) {
        ng[g] += 1;
        np[p] += 1;
        if g == p {
            tp[g] += 1;
            correct += 1;
        }
    }
    let mut confusion = vec![vec![0usize; n]; n];
    for (&g, &p) in gold.iter().zip(pred) {
        confusion[g][p] += 1;
    }
    let per_label: BTreeMap<String, Prf> = (0..n).map(|i| (labels[i].clone(), prf(tp[i], np[i], ng[i]))).collect();
    // sklearn's macro average: over labels present in gold or predictions.
    let present: Vec<&Prf> = (0..n).filter(|&i| ng[i] + np[i] > 0).map(|i| &per_label[&labels[i]]).collect();
    let mean = |f: fn(&Prf) -> f64| if present.is_empty() { 0.0 } else { present.iter().map(|p| f(p)).sum::<f64>() / present.len() as f64 };
    let macro_avg = Prf { precision: mean(|p| p.precision), recall: mean(|p| p.recall), f1: mean(|p| p.f1), support: gold.len() };
    let weighted = |f: fn(&Prf) -> f64| if gold.is_empty() { 0.0 } else { per_label.values().map(|p| f(p) * p.support as f64).sum::<f64>() / gold.len() as f64 };
    let weighted_avg = Prf { precision: weighted(|p| p.precision), recall: weighted(|p| p.recall), f1: weighted(|p| p.f1), support: gold.len() };
    Report {
        accuracy: if gold.is_empty() { 0.0 } else { correct as f64 / gold.len() as f64 },
        macro_f1: macro_avg.f1,
        per_label,
        total: gold.len(),
        macro_avg,
        weighted_avg,
        confusion,
        labels: labels.to_vec(),
    }
}

impl Report {
    /// The text table (like sklearn's `classification_report`).
    pub fn table(&self) -> String {
        let w = self.per_label.keys().map(|k| k.len()).max().unwrap_or(5).max(12);
        let mut s = format!("{:>w$}  precision  recall  f1-score  support\n", "");
        for (k, p) in &self.per_label {
            s += &format!("{k:>w$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n", p.precision, p.recall, p.f1, p.support);
        }
        s += &format!("{:>w$}  {:>9}  {:>6}  {:>8.4}  {:>7}\n", "accuracy", "", "", self.accuracy, self.total);
        for (name, p) in [("macro avg", &self.macro_avg), ("weighted avg", &self.weighted_avg)] {
            s += &format!("{name:>w$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n", p.precision, p.recall, p.f1, p.support);
        }
        s
    }

    /// The confusion matrix as text (rows gold, columns predicted, in model order); `None`
    /// past `max_labels` labels, where it would not be readable.
    pub fn confusion_table(&self, max_labels: usize) -> Option<String> {
        let n = self.labels.len();
        if n == 0 || n > max_labels {
            return None;
        }
        let name = |l: &str| l.chars().take(10).collect::<String>();
        let w = self.labels.iter().map(|l| name(l).chars().count()).max().unwrap_or(1).max(self.total.to_string().len()).max(4);
        let mut s = format!("confusion matrix (rows: gold, columns: predicted)\n{:>w$}", "");
        for l in &self.labels {
            s += &format!("  {:>w$}", name(l));
        }
        s.push('\n');
        for (l, row) in self.labels.iter().zip(&self.confusion) {
            s += &format!("{:>w$}", name(l));
            for c in row {
                s += &format!("  {c:>w$}");
            }
            s.push('\n');
        }
        Some(s)
    }
}

/// An entity: (type, first word, last word), inclusive.
pub type Span = (String, usize, usize);

/// Entities of a BIO sequence, conlleval style: `B-X` starts an X; `I-X` continues an open X, and
/// also starts one when nothing (or another type) is open.
pub fn spans(tags: &[&str]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for (i, t) in tags.iter().enumerate() {
        let (prefix, ty) = match t.split_once('-') {
            Some((p, ty)) if p == "B" || p == "I" => (p, ty),
            _ => ("O", ""),
        };
        let continues = prefix == "I" && open.as_ref().is_some_and(|(ot, _)| ot == ty);
        if !continues {
            if let Some((ot, s)) = open.take() {
                out.push((ot, s, i - 1));
            }
            if prefix != "O" {
                open = Some((ty.to_string(), i));
            }
        }
    }
    if let Some((ot, s)) = open {
        out.push((ot, s, tags.len() - 1));
    }
    out
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EntityReport {
    pub overall: Prf,
    pub per_type: BTreeMap<String, Prf>,
    /// Token-level accuracy over words.
    pub accuracy: f64,
}

pub fn entity_report(gold: &[Vec<String>], pred: &[Vec<String>]) -> EntityReport {
    let (mut tp, mut np, mut ng): (BTreeMap<String, usize>, BTreeMap<String, usize>, BTreeMap<String, usize>) = Default::default();
    let (mut words, mut correct) = (0, 0);
    for (g, p) in gold.iter().zip(pred) {
        let gs = spans(&g.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let ps = spans(&p.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        for s in &gs {
            *ng.entry(s.0.clone()).or_default() += 1;
            if ps.contains(s) {
                *tp.entry(s.0.clone()).or_default() += 1;
            }
        }
        for s in &ps {
            *np.entry(s.0.clone()).or_default() += 1;
        }
        words += g.len();
        correct += g.iter().zip(p).filter(|(a, b)| a == b).count();
    }
    let types: std::collections::BTreeSet<&String> = ng.keys().chain(np.keys()).collect();
    let get = |m: &BTreeMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0);
    let per_type = types.iter().map(|t| ((*t).clone(), prf(get(&tp, t), get(&np, t), get(&ng, t)))).collect();
    let overall = prf(tp.values().sum(), np.values().sum(), ng.values().sum());
    EntityReport { overall, per_type, accuracy: if words == 0 { 0.0 } else { correct as f64 / words as f64 } }
}

impl EntityReport {
    pub fn table(&self) -> String {
        let w = self.per_type.keys().map(|k| k.len()).max().unwrap_or(6).max(12);
        let mut s = format!("{:>w$}  precision  recall  f1-score  support\n", "entity");
        for (k, p) in &self.per_type {
            s += &format!("{k:>w$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n", p.precision, p.recall, p.f1, p.support);
        }
        let o = &self.overall;
        s += &format!("{:>w$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n", "overall", o.precision, o.recall, o.f1, o.support);
        s += &format!("{:>w$}  {:>9}  {:>6}  {:>8.4}\n", "tag accuracy", "", "", self.accuracy);
        s
    }
}

/// Multi-label metrics over an indicator matrix (scikit-learn's semantics): per-label
/// precision/recall/F1 with support, micro averages (over all label decisions), macro F1 (the
/// plain mean over every label, 0 for a label never gold nor predicted, as `f1_score(...,
/// average="macro")`), and subset accuracy (rows with every label right, `accuracy_score`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MultilabelReport {
    pub subset_accuracy: f64,
    pub micro: Prf,
    pub macro_f1: f64,
    pub per_label: BTreeMap<String, Prf>,
    pub total: usize,
}

/// `gold` and `pred` are row-major `rows × labels.len()` indicator matrices.
pub fn multilabel_report(gold: &[bool], pred: &[bool], labels: &[String]) -> MultilabelReport {
    let l = labels.len().max(1);
    let rows = gold.len() / l;
    let (mut tp, mut np, mut ng) = (vec![0; l], vec![0; l], vec![0; l]);
    let mut exact = 0;
    for (g, p) in gold.chunks(l).zip(pred.chunks(l)) {
        for j in 0..l {
            ng[j] += g[j] as usize;
            np[j] += p[j] as usize;
            tp[j] += (g[j] && p[j]) as usize;
        }
        exact += (g == p) as usize;
    }
    let per_label: BTreeMap<String, Prf> = labels.iter().enumerate().map(|(j, name)| (name.clone(), prf(tp[j], np[j], ng[j]))).collect();
    let micro = prf(tp.iter().sum(), np.iter().sum(), ng.iter().sum());
    let macro_f1 = if labels.is_empty() { 0.0 } else { per_label.values().map(|p| p.f1).sum::<f64>() / labels.len() as f64 };
    MultilabelReport { subset_accuracy: if rows == 0 { 0.0 } else { exact as f64 / rows as f64 }, micro, macro_f1, per_label, total: rows }
}

impl MultilabelReport {
    pub fn table(&self) -> String {
        let w = self.per_label.keys().map(|k| k.len()).max().unwrap_or(5).max(15);
        let mut s = format!("{:>w$}  precision  recall  f1-score  support\n", "");
        for (k, p) in &self.per_label {
            s += &format!("{k:>w$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n", p.precision, p.recall, p.f1, p.support);
        }
        let m = &self.micro;
        s += &format!("{:>w$}  {:>9.4}  {:>6.4}  {:>8.4}  {:>7}\n", "micro avg", m.precision, m.recall, m.f1, m.support);
        s += &format!("{:>w$}  {:>9}  {:>6}  {:>8.4}  {:>7}\n", "macro f1", "", "", self.macro_f1, m.support);
        s += &format!("{:>w$}  {:>9}  {:>6}  {:>8.4}  {:>7}\n", "subset accuracy", "", "", self.subset_accuracy, self.total);
        s
    }
}

/// Regression metrics: mean squared and absolute error, Pearson's r and Spearman's ρ (Pearson
/// of the ranks, ties sharing their mean rank). A constant prediction or gold column has no
/// correlation: r and ρ are 0 there (scipy returns NaN, which no "best epoch" could compare).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegressionReport {
    pub mse: f64,
    pub mae: f64,
    pub pearson: f64,
    pub spearman: f64,
    pub total: usize,
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// 1-based ranks, ties averaged (`scipy.stats.rankdata`).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = mean;
        }
        i = j + 1;
    }
    r
}

pub fn regression_report(gold: &[f64], pred: &[f64]) -> RegressionReport {
    let n = gold.len();
    if n == 0 {
        return RegressionReport::default();
    }
    let mse = gold.iter().zip(pred).map(|(g, p)| (g - p) * (g - p)).sum::<f64>() / n as f64;
    let mae = gold.iter().zip(pred).map(|(g, p)| (g - p).abs()).sum::<f64>() / n as f64;
    RegressionReport { mse, mae, pearson: pearson(gold, pred), spearman: pearson(&ranks(gold), &ranks(pred)), total: n }
}

impl RegressionReport {
    pub fn table(&self) -> String {
        format!(
            "{:>10}  {:>8.4}\n{:>10}  {:>8.4}\n{:>10}  {:>8.4}\n{:>10}  {:>8.4}\n{:>10}  {:>8}\n",
            "pearson", self.pearson, "spearman", self.spearman, "mse", self.mse, "mae", self.mae, "examples", self.total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn conlleval_spans_and_scores() {
        let tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-PER"];
        assert_eq!(
            spans(&tags),
            vec![("PER".into(), 0, 1), ("LOC".into(), 3, 4), ("LOC".into(), 5, 5), ("ORG".into(), 6, 6), ("PER".into(), 7, 7)]
        );
        // Gold: PER(0-1), LOC(3). Pred: PER(0) (boundary wrong), LOC(3) right, ORG(5) spurious.
        let r = entity_report(&[v("B-PER I-PER O B-LOC O O")], &[v("B-PER O O B-LOC O B-ORG")]);
        assert_eq!(r.overall.support, 2);
        assert!((r.overall.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.overall.recall - 0.5).abs() < 1e-12);
        assert!((r.overall.f1 - 0.4).abs() < 1e-12);
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn report_matches_hand_counts() {
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        let r = classification_report(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], &labels);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(r.per_label["b"], Prf { precision: 2.0 / 3.0, recall: 1.0, f1: 0.8, support: 2 });
        assert!((r.macro_f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
        // sklearn: macro avg 0.3889 0.5000 0.4333, weighted avg (supports 2, 2, 1) 0.4667 0.6000 0.5200.
        let close = |x: &Prf, y: [f64; 3]| (x.precision - y[0]).abs() < 1e-12 && (x.recall - y[1]).abs() < 1e-12 && (x.f1 - y[2]).abs() < 1e-12 && x.support == 5;
        assert!(close(&r.macro_avg, [(0.5 + 2.0 / 3.0) / 3.0, 0.5, 1.3 / 3.0]), "{:?}", r.macro_avg);
        assert!(close(&r.weighted_avg, [(1.0 + 4.0 / 3.0) / 5.0, 0.6, 0.52]), "{:?}", r.weighted_avg);
        assert_eq!(r.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        let t = r.confusion_table(20).unwrap();
        assert_eq!(t.lines().nth(4).unwrap().split_whitespace().collect::<Vec<_>>(), ["c", "1", "0", "0"], "{t}");
        assert!(r.confusion_table(2).is_none());
        // A label neither gold nor predicted stays out of the macro average, and weighs nothing.
        let r = classification_report(&[0, 1], &[0, 1], &labels);
        assert!(close(&Prf { support: 5, ..r.macro_avg.clone() }, [1.0, 1.0, 1.0]) && r.weighted_avg.f1 == 1.0);
    }

    #[test]
    fn multilabel_report_matches_hand_counts() {
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        let (t, f) = (true, false);
        // Rows: gold {a,b} pred {a}; gold {} pred {}; gold {c} pred {b,c}.
        let gold = [t, t, f, f, f, f, f, f, t];
        let pred = [t, f, f, f, f, f, f, t, t];
        let r = multilabel_report(&gold, &pred, &labels);
        assert!((r.subset_accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.micro, Prf { precision: 2.0 / 3.0, recall: 2.0 / 3.0, f1: 2.0 / 3.0, support: 3 });
        assert_eq!(r.per_label["b"], Prf { precision: 0.0, recall: 0.0, f1: 0.0, support: 1 });
        assert!((r.macro_f1 - (1.0 + 0.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(r.per_label["c"].f1, 1.0);
    }

    #[test]
    fn regression_report_matches_torch_corrcoef() {
        // torch.corrcoef of these vectors, and of their ranks [1, 2.5, 2.5, 5, 6, 4] / [2, 1, 3, 6, 4.5, 4.5]
        // (ties in both): 0.8633425695 and 0.7941176471.
        let gold = [1.0, 2.0, 2.0, 4.0, 5.0, 3.5];
        let pred = [1.5, 1.0, 2.5, 4.5, 4.0, 4.0];
        let r = regression_report(&gold, &pred);
        assert!((r.pearson - 0.8633425695).abs() < 1e-9, "{}", r.pearson);
        assert!((r.spearman - 0.7941176471).abs() < 1e-9, "{}", r.spearman);
        assert!((r.mse - (0.25 + 1.0 + 0.25 + 0.25 + 1.0 + 0.25) / 6.0).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(regression_report(&[1.0, 2.0], &[0.5, 0.5]).pearson, 0.0);
    }
}
