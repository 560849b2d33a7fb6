//! Prune: which teacher layers a student keeps (REFERENCE §2), and which
//! hidden states of student and teacher the distillation loss aligns (§3).
//!
//! Hidden-state indices follow the reference: `h = 0` is the embedding
//! output, `h = i + 1` the output of layer `i` (equivalently the input of
//! layer `i + 1`), and [`Hidden::Final`] (the reference's `-1`) the last
//! hidden state after the final norm. In Hugging Face `output_hidden_states`
//! (a tuple of `num_layers + 1` entries for llama, qwen3 and gpt_neox),
//! `Hidden::Index(h)` is entry `h` for `h < num_layers` and `Hidden::Final`
//! is entry `num_layers`, the last one: HF replaces the raw output of the
//! last layer by its normed version, so `Hidden::Index(num_layers)` does not
//! exist there and is never produced here.

use std::ops::Range;

use crate::error::{Error, Result};

/// The pruning parameters of the reference's `get_layer_mappings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneParams {
    /// One teacher layer is kept out of every `every` (2: every other one).
    pub every: usize,
    /// Leading teacher layers kept as they are.
    pub keep_first: usize,
    /// Trailing teacher layers kept as they are.
    pub keep_last: usize,
}

impl Default for PruneParams {
    fn default() -> Self {
        PruneParams {
            every: 2,
            keep_first: 1,
            keep_last: 2,
        }
    }
}

impl std::fmt::Display for PruneParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--every {} --keep-first {} --keep-last {}",
            self.every, self.keep_first, self.keep_last
        )
    }
}

/// A hidden state, indexed as in the reference (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hidden {
    /// `0`: embedding output; `h > 0`: output of layer `h - 1`.
    Index(usize),
    /// After the final norm (the reference's `-1`).
    Final,
}

impl Hidden {
    /// Position in Hugging Face `output_hidden_states` of a model with
    /// `num_layers` layers (`Final` is the last entry, `num_layers`).
    pub fn hf_index(self, num_layers: usize) -> usize {
        match self {
            Hidden::Index(h) => h,
            Hidden::Final => num_layers,
        }
    }

    /// The key the reference uses (`-1` for the final normed state).
    pub fn reference_key(self) -> i64 {
        match self {
            Hidden::Index(h) => h as i64,
            Hidden::Final => -1,
        }
    }
}

impl std::fmt::Display for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reference_key())
    }
}

/// One term of the cosine alignment loss: student `student` must match teacher `teacher`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlignPair {
    pub student: Hidden,
    pub teacher: Hidden,
}

/// Which teacher layers are deleted and which are copied into the student.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    pub num_teacher_layers: usize,
    /// Deleted teacher layers, ascending.
    pub pruned: Vec<usize>,
    /// Kept teacher layers, ascending: student layer `j` starts as a copy of
    /// teacher layer `copied[j]`.
    pub copied: Vec<usize>,
}

/// The aligned teacher layers `t` of REFERENCE §2 (`keep_first + every - 1`,
/// then every `every`, while `t <= L - keep_last`).
fn aligned_teacher_layers(num_layers: usize, p: PruneParams) -> Vec<usize> {
    let mut out = Vec::new();
    // Checked: the flags may hold any usize.
    let first = p
        .keep_first
        .checked_add(p.every)
        .and_then(|t| t.checked_sub(1));
    let (Some(mut t), Some(end)) = (first, num_layers.checked_sub(p.keep_last)) else {
        return out;
    };
    while t <= end {
        out.push(t);
        match t.checked_add(p.every) {
            Some(n) => t = n,
            None => break,
        }
    }
    out
}

impl PrunePlan {
    /// The plan of REFERENCE §2 for a teacher of `num_teacher_layers` layers.
    pub fn new(
        num_teacher_layers: usize,
        every: usize,
        keep_first: usize,
        keep_last: usize,
    ) -> Result<PrunePlan> {
        PrunePlan::from_params(
            num_teacher_layers,
            PruneParams {
                every,
                keep_first,
                keep_last,
            },
        )
    }

    pub fn from_params(num_teacher_layers: usize, p: PruneParams) -> Result<PrunePlan> {
        let l = num_teacher_layers;
        if l == 0 {
            return Err(Error::Invalid(
                "the teacher has no layers (num_hidden_layers = 0)".into(),
            ));
        }
        if p.every < 2 {
            return Err(Error::Invalid(format!(
                "--every {} is not possible: every must be at least 2 (keep one teacher \
                 layer out of every `every`; 1 would prune nothing)",
                p.every
            )));
        }
        if p.keep_first.checked_add(p.keep_last).is_none_or(|s| s > l) {
            return Err(Error::Invalid(format!(
                "--keep-first {} + --keep-last {} = {} is more than the teacher's {l} layers",
                p.keep_first,
                p.keep_last,
                p.keep_first as u128 + p.keep_last as u128
            )));
        }
        let aligned = aligned_teacher_layers(l, p);
        if aligned.is_empty() {
            return Err(Error::Invalid(format!(
                "{p} prunes nothing from a teacher with {l} layers: no block of {} layers fits \
                 between the first {} and the last {}; lower --every, --keep-first or --keep-last",
                p.every, p.keep_first, p.keep_last
            )));
        }
        let mut pruned = Vec::new();
        for &t in &aligned {
            pruned.extend(t + 1 - p.every..t);
        }
        let copied = (0..l).filter(|i| !pruned.contains(i)).collect();
        Ok(PrunePlan {
            num_teacher_layers: l,
            pruned,
            copied,
        })
    }

    /// A plan from the lists of a `student_config.json`, checked: together
    /// they must be the teacher's layers `0..num_teacher_layers`, each once.
    pub fn from_lists(
        num_teacher_layers: usize,
        pruned: Vec<usize>,
        copied: Vec<usize>,
    ) -> Result<PrunePlan> {
        let l = num_teacher_layers;
        let bad = |m: String| Err(Error::Invalid(format!("student_config.json: {m}")));
        if copied.is_empty() {
            return bad("copied_teacher_layers is empty".into());
        }
        if !copied.windows(2).all(|w| w[0] < w[1]) {
            return bad(format!(
                "copied_teacher_layers must be strictly ascending, got {copied:?}"
            ));
        }
        let mut seen = vec![0u8; l];
        for &i in pruned.iter().chain(&copied) {
            if i >= l {
                return bad(format!(
                    "names teacher layer {i} but the teacher has {l} layers (0..={}); \
                     is this the student of another teacher?",
                    l.saturating_sub(1)
                ));
            }
            seen[i] += 1;
        }
        let twice: Vec<usize> = (0..l).filter(|&i| seen[i] > 1).collect();
        let never: Vec<usize> = (0..l).filter(|&i| seen[i] == 0).collect();
        if !twice.is_empty() || !never.is_empty() {
            return bad(format!(
                "pruned_teacher_layers and copied_teacher_layers must split the teacher's {l} \
                 layers; listed twice: {twice:?}, in neither: {never:?}; is this the student \
                 of another teacher?"
            ));
        }
        let mut pruned = pruned;
        pruned.sort_unstable();
        Ok(PrunePlan {
            num_teacher_layers: l,
            pruned,
            copied,
        })
    }

    pub fn num_student_layers(&self) -> usize {
        self.copied.len()
    }

    /// The teacher layers each student layer stands for: student layer `j`
    /// replaces teacher layers `copied[j] .. copied[j + 1]` (the last one up to
    /// the teacher's end). Leading pruned layers (only with `keep_first = 0`)
    /// belong to no student layer: the embedding output stands in for them.
    pub fn blocks(&self) -> Vec<Range<usize>> {
        let n = self.copied.len();
        (0..n)
            .map(|j| {
                let end = if j + 1 < n {
                    self.copied[j + 1]
                } else {
                    self.num_teacher_layers
                };
                self.copied[j]..end
            })
            .collect()
    }

    /// The hidden-state pairs of the cosine loss: student `h = j` → teacher
    /// `h = copied[j]` for every student layer `j` (the input of student
    /// layer `j` must equal the input of the teacher layer it was copied
    /// from; equivalently, each student layer reproduces its teacher block),
    /// then `Final → Final`. `num_student_layers + 1` pairs.
    ///
    /// This equals the reference's `get_layer_mappings` whenever the last
    /// aligned teacher layer is `L - keep_last`, which holds for every
    /// published pair and for the defaults on any even `L`. Otherwise the
    /// reference drops the pairs of some trailing layers or shifts them by
    /// one (see [`reference_alignment`]); this mapping stays block-exact.
    pub fn alignment(&self) -> Vec<AlignPair> {
        let mut out: Vec<AlignPair> = self
            .copied
            .iter()
            .enumerate()
            .map(|(j, &t)| AlignPair {
                student: Hidden::Index(j),
                teacher: Hidden::Index(t),
            })
            .collect();
        out.push(AlignPair {
            student: Hidden::Final,
            teacher: Hidden::Final,
        });
        out
    }

    /// [`PrunePlan::alignment`] as positions in Hugging Face
    /// `output_hidden_states`: (student index in `0..=n`, teacher index in `0..=L`).
    pub fn alignment_hf(&self) -> Vec<(usize, usize)> {
        let n = self.num_student_layers();
        self.alignment()
            .iter()
            .map(|p| {
                (
                    p.student.hf_index(n),
                    p.teacher.hf_index(self.num_teacher_layers),
                )
            })
            .collect()
    }
}

/// Exactly the `aligned_layers` of the reference's `get_layer_mappings`, in
/// its insertion order, for comparison. Use [`PrunePlan::alignment`].
pub fn reference_alignment(num_teacher_layers: usize, p: PruneParams) -> Vec<AlignPair> {
    let l = num_teacher_layers;
    let pair = |s: usize, t: usize| AlignPair {
        student: Hidden::Index(s),
        teacher: Hidden::Index(t),
    };
    let mut out: Vec<AlignPair> = (0..p.keep_first).map(|i| pair(i, i)).collect();
    let mut largest = 0;
    for (i, t) in aligned_teacher_layers(l, p).into_iter().enumerate() {
        out.push(pair(i + p.keep_first, t));
        largest = i + p.keep_first;
    }
    for t in (l + 1).saturating_sub(p.keep_last)..l {
        largest += 1;
        // A later key overwrites an earlier one in the reference's dict.
        out.retain(|q| q.student != Hidden::Index(largest));
        out.push(pair(largest, t));
    }
    out.push(AlignPair {
        student: Hidden::Final,
        teacher: Hidden::Final,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(p: &[AlignPair]) -> Vec<(i64, i64)> {
        p.iter()
            .map(|q| (q.student.reference_key(), q.teacher.reference_key()))
            .collect()
    }

    #[test]
    fn qwen3_36_layers() {
        let p = PrunePlan::new(36, 2, 1, 2).unwrap();
        assert_eq!(p.pruned, (1..=33).step_by(2).collect::<Vec<_>>());
        assert_eq!(p.pruned.len(), 17);
        let mut c: Vec<usize> = (0..=34).step_by(2).collect();
        c.push(35);
        assert_eq!(p.copied, c);
        assert_eq!(p.num_student_layers(), 19);
        let a = idx(&p.alignment());
        let mut want: Vec<(i64, i64)> = (0..=17).map(|j| (j, 2 * j)).collect();
        want.push((18, 35));
        want.push((-1, -1));
        assert_eq!(a.len(), 20);
        assert_eq!(a, want);
        assert_eq!(idx(&reference_alignment(36, PruneParams::default())), want);
        // HF positions: the final normed state is the last entry of each tuple.
        let hf = p.alignment_hf();
        assert_eq!(hf[0], (0, 0));
        assert_eq!(hf[1], (1, 2));
        assert_eq!(hf[18], (18, 35));
        assert_eq!(hf[19], (19, 36));
        // Blocks: student 0 stands for teacher 0..2, the last two are 1:1.
        let b = p.blocks();
        assert_eq!(b[0], 0..2);
        assert_eq!(b[16], 32..34);
        assert_eq!(b[17], 34..35);
        assert_eq!(b[18], 35..36);
    }

    #[test]
    fn llama_28_and_pythia_32() {
        let p = PrunePlan::new(28, 2, 1, 2).unwrap();
        assert_eq!(p.pruned, (1..=25).step_by(2).collect::<Vec<_>>());
        assert_eq!(p.num_student_layers(), 15);
        let p = PrunePlan::new(32, 2, 1, 2).unwrap();
        assert_eq!(p.pruned, (1..=29).step_by(2).collect::<Vec<_>>());
        assert_eq!(p.num_student_layers(), 17);
        assert_eq!(
            idx(&p.alignment()),
            idx(&reference_alignment(32, PruneParams::default()))
        );
    }

    #[test]
    fn small_teachers() {
        // L = 4: t = 2 only (4 > 4 - 2): prune 1.
        let p = PrunePlan::new(4, 2, 1, 2).unwrap();
        assert_eq!(
            (p.pruned.clone(), p.copied.clone()),
            (vec![1], vec![0, 2, 3])
        );
        assert_eq!(idx(&p.alignment()), vec![(0, 0), (1, 2), (2, 3), (-1, -1)]);
        // L = 5: t = 2 (4 > 3): prune 1; copied 0, 2, 3, 4.
        let p = PrunePlan::new(5, 2, 1, 2).unwrap();
        assert_eq!(
            (p.pruned.clone(), p.copied.clone()),
            (vec![1], vec![0, 2, 3, 4])
        );
        assert_eq!(
            idx(&p.alignment()),
            vec![(0, 0), (1, 2), (2, 3), (3, 4), (-1, -1)]
        );
        // L = 6: t = 2, 4: prune 1, 3.
        let p = PrunePlan::new(6, 2, 1, 2).unwrap();
        assert_eq!(
            (p.pruned.clone(), p.copied.clone()),
            (vec![1, 3], vec![0, 2, 4, 5])
        );
        assert_eq!(
            idx(&p.alignment()),
            vec![(0, 0), (1, 2), (2, 4), (3, 5), (-1, -1)]
        );
        assert_eq!(
            idx(&p.alignment()),
            idx(&reference_alignment(6, PruneParams::default()))
        );
        // L = 3, keep_last 2: t = 2 > 1, nothing fits.
        assert!(PrunePlan::new(3, 2, 1, 2).is_err());
        let p = PrunePlan::new(3, 2, 1, 1).unwrap();
        assert_eq!((p.pruned, p.copied), (vec![1], vec![0, 2]));
    }

    #[test]
    fn every_3_keep_first_2_keep_last_1() {
        // L = 11: t = 4, 7, 10 (<= 10): prune 2,3 5,6 8,9.
        let params = PruneParams {
            every: 3,
            keep_first: 2,
            keep_last: 1,
        };
        let p = PrunePlan::from_params(11, params).unwrap();
        assert_eq!(p.pruned, vec![2, 3, 5, 6, 8, 9]);
        assert_eq!(p.copied, vec![0, 1, 4, 7, 10]);
        let want = vec![(0, 0), (1, 1), (2, 4), (3, 7), (4, 10), (-1, -1)];
        assert_eq!(idx(&p.alignment()), want);
        assert_eq!(idx(&reference_alignment(11, params)), want);
        // L = 12: t = 4, 7, 10 (13 > 11): layer 11 is kept too.
        let p = PrunePlan::from_params(12, params).unwrap();
        assert_eq!(p.copied, vec![0, 1, 4, 7, 10, 11]);
        assert_eq!(
            idx(&p.alignment()),
            vec![(0, 0), (1, 1), (2, 4), (3, 7), (4, 10), (5, 11), (-1, -1)]
        );
    }

    #[test]
    fn irregular_tail_differs_from_the_reference() {
        // L = 35 with the defaults: t = 2..=32, copied ends 32, 33, 34. The
        // reference aligns student h 17 (output of the copy of layer 32) with
        // teacher h 34 and leaves student h 18 out; this plan is block-exact.
        let p = PrunePlan::new(35, 2, 1, 2).unwrap();
        assert_eq!(&p.copied[16..], &[32, 33, 34]);
        let a = idx(&p.alignment());
        assert_eq!(&a[16..], &[(16, 32), (17, 33), (18, 34), (-1, -1)]);
        let r = idx(&reference_alignment(35, PruneParams::default()));
        assert_eq!(&r[16..], &[(16, 32), (17, 34), (-1, -1)]);
    }

    #[test]
    fn keep_first_zero_and_keep_last_zero() {
        // keep_first 0: layer 0 is pruned; the embedding output stands in
        // for it (student h 0 -> teacher h 1), as in the reference.
        let params = PruneParams {
            every: 2,
            keep_first: 0,
            keep_last: 2,
        };
        let p = PrunePlan::from_params(5, params).unwrap();
        assert_eq!(
            (p.pruned.clone(), p.copied.clone()),
            (vec![0, 2], vec![1, 3, 4])
        );
        assert_eq!(idx(&p.alignment()), vec![(0, 1), (1, 3), (2, 4), (-1, -1)]);
        assert_eq!(idx(&reference_alignment(5, params)), idx(&p.alignment()));
        assert_eq!(p.blocks(), vec![1..3, 3..4, 4..5]);
        // keep_last 0: the last layer may be pruned.
        let p = PrunePlan::new(4, 2, 1, 0).unwrap();
        assert_eq!(
            (p.pruned.clone(), p.copied.clone()),
            (vec![1, 3], vec![0, 2])
        );
        assert_eq!(idx(&p.alignment()), vec![(0, 0), (1, 2), (-1, -1)]);
    }

    #[test]
    fn impossible_parameters() {
        let e = PrunePlan::new(36, 0, 1, 2).unwrap_err().to_string();
        assert!(e.contains("--every 0") && e.contains("at least 2"), "{e}");
        assert!(PrunePlan::new(36, 1, 1, 2).is_err());
        let e = PrunePlan::new(4, 2, 3, 2).unwrap_err().to_string();
        assert!(e.contains("more than the teacher's 4 layers"), "{e}");
        let e = PrunePlan::new(4, 4, 1, 2).unwrap_err().to_string();
        assert!(e.contains("prunes nothing"), "{e}");
        assert!(PrunePlan::new(0, 2, 0, 0).is_err());
    }

    #[test]
    fn lists_are_checked() {
        let p = PrunePlan::new(6, 2, 1, 2).unwrap();
        let q = PrunePlan::from_lists(6, p.pruned.clone(), p.copied.clone()).unwrap();
        assert_eq!(p, q);
        let e = PrunePlan::from_lists(8, p.pruned.clone(), p.copied.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("in neither: [6, 7]"), "{e}");
        assert!(PrunePlan::from_lists(4, p.pruned.clone(), p.copied.clone()).is_err());
        assert!(PrunePlan::from_lists(6, vec![1, 2], vec![0, 2, 4, 5]).is_err());
        assert!(PrunePlan::from_lists(6, vec![1, 3], vec![0, 4, 2, 5]).is_err());
    }
}
