//! Token classification over inputs longer than the model's window (`--stride N`): the words are
//! cut into overlapping windows of whole words, consecutive windows sharing at most `stride`
//! tokens (transformers' `stride`), and every word is labelled — in training, evaluation and
//! prediction — by exactly one window: the one where it has the most context on both sides
//! (BERT's "max context" rule for SQuAD documents), the others holding it as context only.
//! Without `--stride` a long input is truncated, as transformers does.

use std::ops::Range;

use crate::data::tokenize::BertTokenizer;
use crate::error::{Error, Result};

use super::data::Example;

/// One window of an input: the words it holds and the words it labels (`own ⊆ span`).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub span: Range<usize>,
    pub own: Range<usize>,
}

/// The windows of an input whose words take `counts[i]` tokens, each holding at most `budget`
/// tokens (a single word longer than that gets a window of its own, which the tokenizer then
/// truncates), consecutive ones overlapping by at most `stride` tokens. The owned ranges
/// partition `0..counts.len()`: in the overlap of two windows, a word goes to the first when
/// its middle lies before the overlap's middle (in tokens) — the window where it sits further
/// from the edge, which is the max-context rule for overlaps up to half a window.
pub fn plan(counts: &[usize], budget: usize, stride: usize) -> Vec<Window> {
    let n = counts.len();
    if n == 0 {
        return Vec::new();
    }
    // prefix[i]: tokens before word i.
    let mut prefix = vec![0usize; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + counts[i];
    }
    let mut spans = Vec::new();
    let mut s = 0;
    loop {
        let mut e = s + 1;
        while e < n && prefix[e + 1] - prefix[s] <= budget {
            e += 1;
        }
        spans.push(s..e);
        if e >= n {
            break;
        }
        // The next window starts as far back as `stride` tokens of overlap allow, and always
        // after this one's start (progress).
        let mut j = e;
        while j > s + 1 && prefix[e] - prefix[j - 1] <= stride {
            j -= 1;
        }
        s = j;
    }
    let mut out: Vec<Window> = Vec::with_capacity(spans.len());
    let mut from = 0;
    for k in 0..spans.len() {
        let to = match spans.get(k + 1) {
            None => n,
            Some(next) => {
                let (a, b) = (next.start, spans[k].end);
                // The first word of the overlap whose middle is at or past the overlap's middle.
                let split = (a..b).find(|&i| prefix[i] + prefix[i + 1] >= prefix[a] + prefix[b]).unwrap_or(b);
                split.max(from)
            }
        };
        out.push(Window { span: spans[k].clone(), own: from..to });
        from = to;
    }
    out
}

/// The window budget of a tokenizer: its length less its special tokens; `stride` must leave
/// room to advance.
pub fn budget(tok: &BertTokenizer, stride: usize) -> Result<usize> {
    let budget = tok.max_len().saturating_sub(tok.specials());
    if stride >= budget {
        return Err(Error::Value {
            op: "--stride",
            detail: format!(
                "{stride} must be less than the tokens a window holds besides its special tokens ({} − {} = {budget}); half of it or less is usual",
                tok.max_len(),
                tok.specials()
            ),
        });
    }
    Ok(budget)
}

/// A token-classification example's windows (just itself when it fits): (first word, window
/// example labelling only the words it owns).
pub fn split(tok: &BertTokenizer, e: &Example, budget: usize, stride: usize) -> Result<Vec<(usize, Example)>> {
    let Example::Tokens { words, tags, .. } = e else {
        return Err(Error::Value { op: "--stride", detail: "windows apply to token classification (ner) only".into() });
    };
    let counts = tok.word_token_counts(words)?;
    if counts.iter().sum::<usize>() <= budget {
        return Ok(vec![(0, e.clone())]);
    }
    Ok(plan(&counts, budget, stride)
        .into_iter()
        .map(|w| {
            let own = w.own.start - w.span.start..w.own.end - w.span.start;
            let ex = Example::Tokens { words: words[w.span.clone()].to_vec(), tags: tags[w.span.clone()].to_vec(), scored: own };
            (w.span.start, ex)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    fn tokens(counts: &[usize], r: &Range<usize>) -> usize {
        counts[r.clone()].iter().sum()
    }

    /// The windows' invariants on random word lengths, budgets and strides, and (up to half a
    /// window of overlap) ownership by brute-force max context.
    #[test]
    fn windows_cover_fit_overlap_and_own_by_max_context() {
        let mut rng = Rng::new(7);
        let mut overlaps = 0;
        for case in 0..2000 {
            let n = 1 + rng.below(80) as usize;
            let counts: Vec<usize> = (0..n).map(|_| if rng.below(20) == 0 { 0 } else { 1 + rng.below(4) as usize }).collect();
            let budget = 4 + rng.below(30) as usize;
            let stride = rng.below(budget as u64) as usize;
            let w = plan(&counts, budget, stride);
            assert_eq!(w.first().unwrap().span.start, 0, "case {case}");
            assert_eq!(w.last().unwrap().span.end, n, "case {case}");
            let mut next = 0;
            for (k, x) in w.iter().enumerate() {
                assert!(x.span.end > x.span.start, "case {case}: empty window");
                assert!(tokens(&counts, &x.span) <= budget || x.span.len() == 1, "case {case}: window {k} over budget");
                assert_eq!(x.own.start, next, "case {case}: owned ranges must partition the words");
                assert!(x.own.start >= x.span.start && x.own.end <= x.span.end, "case {case}: owns a word it does not hold");
                next = x.own.end;
                if k > 0 {
                    let prev = &w[k - 1];
                    assert!(x.span.start > prev.span.start && x.span.start <= prev.span.end, "case {case}: windows must advance and touch");
                    let shared = prev.span.start.max(x.span.start)..prev.span.end.min(x.span.end);
                    assert!(tokens(&counts, &shared) <= stride, "case {case}: overlap above the stride");
                    // A window cannot grow into the next word: it was full (or ends the input).
                    assert!(prev.span.end == n || tokens(&counts, &(prev.span.start..prev.span.end + 1)) > budget, "case {case}: window {} not filled", k - 1);
                    if !shared.is_empty() {
                        overlaps += 1;
                    }
                }
            }
            assert_eq!(next, n, "case {case}");
            if 2 * stride <= budget {
                // Every owned word (not an empty one) has at least the context any other window gives it.
                let context = |x: &Window, i: usize| tokens(&counts, &(x.span.start..i)).min(tokens(&counts, &(i + 1..x.span.end)));
                for x in &w {
                    for i in x.own.clone().filter(|&i| counts[i] > 0) {
                        for y in w.iter().filter(|y| y.span.contains(&i)) {
                            assert!(context(x, i) + 1 >= context(y, i), "case {case}: word {i} owned by {x:?} has less context than in {y:?}");
                        }
                    }
                }
            }
        }
        assert!(overlaps > 1000, "the cases must exercise overlapping windows ({overlaps})");
    }

    #[test]
    fn a_short_input_is_one_window_and_a_long_word_stands_alone() {
        assert_eq!(plan(&[1, 2, 3], 10, 2), vec![Window { span: 0..3, own: 0..3 }]);
        // The 9-token word cannot share a window of 5 with anything.
        let w = plan(&[1, 9, 1], 5, 1);
        assert_eq!(w.iter().map(|x| x.span.clone()).collect::<Vec<_>>(), vec![0..1, 1..2, 2..3]);
        assert_eq!(w.iter().map(|x| x.own.clone()).collect::<Vec<_>>(), vec![0..1, 1..2, 2..3]);
        // Ten one-token words, windows of 4 overlapping by 2: 0..4, 2..6, 4..8, 6..10; each
        // overlap split in its middle.
        let w = plan(&[1; 10], 4, 2);
        assert_eq!(w.iter().map(|x| x.span.clone()).collect::<Vec<_>>(), vec![0..4, 2..6, 4..8, 6..10]);
        assert_eq!(w.iter().map(|x| x.own.clone()).collect::<Vec<_>>(), vec![0..3, 3..5, 5..7, 7..10]);
    }

    /// `split` with real tokenizers (WordPiece; byte-level BPE, whose words need the prefix
    /// space): the windows fit the tokenizer untruncated, their scored words put back together
    /// are the input's words and tags in order, and an input that fits stays whole.
    #[test]
    fn split_windows_fit_the_tokenizer_and_score_every_word_once() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for model in ["weights/tiny-bert", "weights/tiny-roberta"] {
            let tok = BertTokenizer::from_dir(root.join(model), 16).unwrap();
            let text = "the quick brown fox jumps over my email , unbelievably antidisestablishmentarianism and then it rests on the mat in the sun ".repeat(3);
            let words: Vec<String> = text.split_whitespace().map(String::from).collect();
            let tags: Vec<String> = (0..words.len()).map(|i| format!("B-{i}")).collect();
            let e = Example::tokens(words.clone(), tags.clone());
            let stride = 5;
            let b = budget(&tok, stride).unwrap();
            assert_eq!(b, 14, "{model}: 16 less [CLS] and [SEP]");
            let w = split(&tok, &e, b, stride).unwrap();
            assert!(w.len() > 4, "{model}: {} windows", w.len());
            let (mut got_words, mut got_tags, mut long_words) = (Vec::new(), Vec::new(), 0);
            for (first, x) in &w {
                let Example::Tokens { words: ww, tags: tt, scored } = x else { panic!() };
                assert_eq!(&words[*first..*first + ww.len()], &ww[..], "{model}");
                let enc = tok.encode_words(std::slice::from_ref(ww)).unwrap();
                let long_word = ww.len() == 1 && tok.word_token_counts(ww).unwrap()[0] > b;
                assert_eq!(enc.truncated[0], long_word, "{model}: window at word {first} does not fit");
                long_words += long_word as usize;
                got_words.extend_from_slice(&ww[scored.clone()]);
                got_tags.extend_from_slice(&tt[scored.clone()]);
            }
            assert_eq!(got_words, words, "{model}");
            assert!(long_words <= 3, "{model}: only the 28-letter word may outgrow a window");
            assert_eq!(got_tags, tags, "{model}");
            // A short input is itself.
            let short = Example::tokens(words[..3].to_vec(), tags[..3].to_vec());
            assert_eq!(split(&tok, &short, b, stride).unwrap(), vec![(0, short.clone())]);
            // The counts are what encode_words makes of the words.
            let wide = BertTokenizer::from_dir(root.join(model), 4096).unwrap();
            let enc = wide.encode_words(std::slice::from_ref(&words)).unwrap();
            assert_eq!(tok.word_token_counts(&words).unwrap().iter().sum::<usize>() + tok.specials(), enc.seq_len(), "{model}");
            assert!(budget(&tok, 14).is_err() && budget(&tok, 13).is_ok());
        }
    }
}
