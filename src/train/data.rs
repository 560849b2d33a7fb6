//! Training data: `.txt` files (one document each), `.jsonl` files (one
//! record per line with a `"text"` field, or pre-tokenised `"input_ids"`),
//! or folders of them. Text is tokenised with the teacher's tokenizer and
//! documents are joined with EOS; pre-tokenised records are packed as they
//! are. The stream is cut into sequences of `seq_len`; the last few form a
//! held-out set; the rest are visited in a seeded shuffled order per epoch.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;

/// A small counter-based generator (SplitMix64): the shuffle depends only
/// on (seed, epoch), so resuming needs no saved generator state beyond them.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A permutation of 0..n, Fisher–Yates driven by splitmix64(seed, epoch).
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut state = splitmix64(seed ^ splitmix64(epoch.wrapping_add(1)));
    for i in (1..n).rev() {
        state = splitmix64(state);
        let j = (state % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                collect_files(&e, out)?;
            } else if matches!(
                e.extension().and_then(|x| x.to_str()),
                Some("txt") | Some("jsonl")
            ) {
                out.push(e);
            }
        }
        Ok(())
    } else if path.is_file() {
        out.push(path.to_path_buf());
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "--data {}: no such file or folder",
            path.display()
        )))
    }
}

/// The token stream of every file, in sorted path order. Every id must be
/// below `vocab` (pre-tokenised ids are checked here; the tokenizer's were
/// checked against config.json when it was loaded).
pub fn token_stream(
    paths: &[PathBuf],
    tok: &Tokenizer,
    eos: u32,
    vocab: usize,
) -> Result<Vec<u32>> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    if files.is_empty() {
        return Err(Error::Invalid(
            "--data: no .txt or .jsonl files found".into(),
        ));
    }
    if eos as usize >= vocab {
        return Err(Error::Invalid(format!(
            "the end-of-text id {eos} that joins documents is not below the vocabulary size {vocab}"
        )));
    }
    let mut stream = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}: not UTF-8 text (invalid byte at offset {})",
                f.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        if f.extension().and_then(|x| x.to_str()) == Some("jsonl") {
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = || format!("{}:{}", f.display(), n + 1);
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::Invalid(format!("{}: not a JSON object: {e}", at())))?;
                let Some(obj) = v.as_object() else {
                    return Err(Error::Invalid(format!(
                        "{}: a record must be a JSON object, got {}",
                        at(),
                        short(&v)
                    )));
                };
                if let Some(ids) = obj.get("input_ids") {
                    let Some(ids) = ids.as_array() else {
                        return Err(Error::Invalid(format!(
                            "{}: \"input_ids\" must be a list of token ids, got {}",
                            at(),
                            short(ids)
                        )));
                    };
                    for (i, id) in ids.iter().enumerate() {
                        let ok = id.as_u64().filter(|&x| x < vocab as u64);
                        let Some(ok) = ok else {
                            return Err(Error::Invalid(format!(
                                "{}: input_ids[{i}] = {}: expected an integer from 0 to {} \
                                 (the vocabulary has {vocab} tokens)",
                                at(),
                                short(id),
                                vocab - 1
                            )));
                        };
                        stream.push(ok as u32);
                    }
                } else if let Some(t) = obj.get("text") {
                    let Some(t) = t.as_str() else {
                        return Err(Error::Invalid(format!(
                            "{}: \"text\" must be a string, got {}",
                            at(),
                            short(t)
                        )));
                    };
                    stream.extend(tok.encode(t, false)?);
                    stream.push(eos);
                } else {
                    return Err(Error::Invalid(format!(
                        "{}: a record needs a \"text\" string or an \"input_ids\" list",
                        at()
                    )));
                }
            }
        } else {
            stream.extend(tok.encode(&text, false)?);
            stream.push(eos);
        }
    }
    if let Some(bad) = stream.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "the tokenizer gave id {bad}, not below the vocabulary size {vocab}"
        )));
    }
    Ok(stream)
}

/// A JSON value for a message: at most 40 characters of it.
fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Packed sequences split into training and held-out parts.
pub struct Corpus {
    pub seq_len: usize,
    pub train: Vec<Vec<u32>>,
    pub eval: Vec<Vec<u32>>,
}

impl Corpus {
    /// Pack `stream` into sequences of `seq_len` (a shorter tail is
    /// dropped) and hold out the last ones, about `eval_tokens` tokens.
    pub fn pack(stream: &[u32], seq_len: usize, eval_tokens: usize) -> Result<Corpus> {
        if seq_len < 2 {
            return Err(Error::Invalid(format!(
                "--seq-len must be at least 2, got {seq_len}"
            )));
        }
        let mut seqs: Vec<Vec<u32>> = stream.chunks_exact(seq_len).map(|c| c.to_vec()).collect();
        let n_eval = if eval_tokens == 0 {
            0
        } else {
            eval_tokens.div_ceil(seq_len)
        };
        if seqs.len() < n_eval + 1 {
            return Err(Error::Invalid(format!(
                "the data has {} tokens: {} sequence(s) of {seq_len}, too few for training plus {n_eval} held out; \
                 add data or lower --seq-len / --eval-tokens",
                stream.len(),
                seqs.len()
            )));
        }
        let eval = seqs.split_off(seqs.len() - n_eval);
        Ok(Corpus {
            seq_len,
            train: seqs,
            eval,
        })
    }
}

/// Where the data loop stands: everything needed to continue exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPosition {
    pub seed: u64,
    pub epoch: u64,
    pub index: usize,
}

impl DataPosition {
    /// The next `count` training sequences, concatenated; wraps into a new
    /// epoch (with a new order) when one runs out.
    pub fn next_batch(&mut self, corpus: &Corpus, count: usize, perm: &mut Vec<usize>) -> Vec<u32> {
        let n = corpus.train.len();
        let mut out = Vec::with_capacity(count * corpus.seq_len);
        for _ in 0..count {
            if self.index >= n {
                self.epoch += 1;
                self.index = 0;
                *perm = permutation(n, self.seed, self.epoch);
            }
            if perm.len() != n {
                *perm = permutation(n, self.seed, self.epoch);
            }
            out.extend_from_slice(&corpus.train[perm[self.index]]);
            self.index += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_deterministic_and_complete() {
        let a = permutation(100, 7, 0);
        assert_eq!(a, permutation(100, 7, 0));
        assert_ne!(a, permutation(100, 7, 1));
        assert_ne!(a, permutation(100, 8, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn packing_and_positions() {
        let stream: Vec<u32> = (0..105).collect();
        let c = Corpus::pack(&stream, 10, 15).unwrap();
        assert_eq!(c.train.len(), 8);
        assert_eq!(c.eval.len(), 2);
        assert_eq!(c.eval[1][9], 99);
        let mut pos = DataPosition {
            seed: 1,
            epoch: 0,
            index: 0,
        };
        let mut perm = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(pos.next_batch(&c, 2, &mut perm));
        }
        // One epoch visits every training sequence once.
        let mut firsts: Vec<u32> = seen.chunks(10).map(|s| s[0]).collect();
        firsts.sort();
        assert_eq!(firsts, (0..8).map(|i| i * 10).collect::<Vec<u32>>());
        // Resuming from a saved position gives the same continuation.
        let saved = pos;
        let mut p2 = saved;
        let mut perm2 = Vec::new();
        assert_eq!(
            pos.next_batch(&c, 3, &mut perm),
            p2.next_batch(&c, 3, &mut perm2)
        );
        assert!(Corpus::pack(&stream, 50, 100).is_err());
    }
}
