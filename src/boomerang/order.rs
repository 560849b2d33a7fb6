//! Patch orders: in which order the student's layers get their teacher
//! blocks back as the model grows from the student to the teacher.
//!
//! The reference has two fixed orders (REFERENCE §4): last-k (from the top
//! of the student down) and first-k (from the bottom up). Each of their
//! steps restores one *unit*: a run of student layers with exactly one
//! block that stands for more than one teacher layer (plus the one-to-one
//! layers up to the next patch point). A [`PatchOrder`] is any permutation
//! of those units over the same base: the base direction fixes the model
//! at `k = 0`, which parts (embedding, final norm, head) come from which
//! model below the top, and that `k = P` is the teacher itself. The
//! reference orders are the identity permutation; `--order auto` chooses
//! another one from data ([`greedy`]).

use std::ops::Range;

use serde_json::{json, Value};

use super::patch::{patch_points, Direction};
use super::plan::PrunePlan;
use crate::error::{Error, Result};

/// A run of student layers and the teacher layers that replace them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// The student layer whose block stands for several teacher layers:
    /// the name of the unit in `student_config.json`.
    pub key: usize,
    /// The student layers the unit replaces.
    pub student: Range<usize>,
    /// The teacher layers that replace them.
    pub teacher: Range<usize>,
}

/// The student split into consecutive segments for `direction`: the units
/// in reference order (`units[u]` is restored by the reference's step
/// `u → u + 1`), and the student and teacher layers of the segment the
/// base model already takes from the teacher (`None` when it takes none).
/// With no patch point at all the only model is the teacher.
pub struct Segments {
    pub units: Vec<Unit>,
    pub base_teacher: Option<(Range<usize>, Range<usize>)>,
}

/// The units of the reference order of `direction` for `plan`.
pub fn segments(plan: &PrunePlan, direction: Direction) -> Segments {
    let n = plan.num_student_layers();
    let l = plan.num_teacher_layers;
    let pts = patch_points(&plan.copied, direction);
    let p = pts.len();
    if p == 0 {
        return Segments {
            units: Vec::new(),
            base_teacher: None,
        };
    }
    let (s, t): (Vec<usize>, Vec<usize>) = pts.iter().map(|x| (x.student, x.teacher)).unzip();
    match direction {
        Direction::Last => {
            // Unit p-1 is the bottom (student 0..s[0], teacher from layer 0),
            // unit p-1-i lies between points i-1 and i, the base's teacher
            // part from the top point up.
            let units: Vec<Unit> = (0..p)
                .map(|u| {
                    let i = p - 1 - u;
                    let (s0, t0) = if i == 0 { (0, 0) } else { (s[i - 1], t[i - 1]) };
                    Unit {
                        key: s[i] - 1,
                        student: s0..s[i],
                        teacher: t0..t[i],
                    }
                })
                .collect();
            Segments {
                units,
                base_teacher: Some((s[p - 1]..n, t[p - 1]..l)),
            }
        }
        Direction::First => {
            let units = (0..p)
                .map(|u| {
                    let (s1, t1) = if u + 1 < p {
                        (s[u + 1], t[u + 1])
                    } else {
                        (n, l)
                    };
                    Unit {
                        key: s[u],
                        student: s[u]..s1,
                        teacher: t[u]..t1,
                    }
                })
                .collect();
            Segments {
                units,
                base_teacher: (t[0] > 0).then_some((0..s[0], 0..t[0])),
            }
        }
    }
}

/// How the patch order was chosen, for people and for the file.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderSource {
    /// `greedy calibration perplexity`.
    pub method: String,
    /// The calibration text, its tokens and window length.
    pub calibration: String,
    pub tokens: usize,
    pub seq_len: usize,
    /// Calibration perplexity after each step (`k = 1 ..= P-1`).
    pub perplexity: Vec<f64>,
}

/// An order in which the units come back (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchOrder {
    /// The base: the model at `k = 0` and the parts below the top.
    pub direction: Direction,
    /// Unit indices (into [`segments`]`.units`) in the order they are
    /// restored; `None`: the reference order (the identity).
    pub steps: Option<Vec<usize>>,
    /// Where a chosen order came from.
    pub source: Option<OrderSource>,
}

impl From<Direction> for PatchOrder {
    fn from(direction: Direction) -> PatchOrder {
        PatchOrder::reference(direction)
    }
}

impl PatchOrder {
    pub fn reference(direction: Direction) -> PatchOrder {
        PatchOrder {
            direction,
            steps: None,
            source: None,
        }
    }

    /// A chosen order: `steps` must be a permutation of the units' indices.
    pub fn chosen(
        plan: &PrunePlan,
        direction: Direction,
        steps: Vec<usize>,
        source: Option<OrderSource>,
    ) -> Result<PatchOrder> {
        let p = segments(plan, direction).units.len();
        let mut seen = vec![false; p];
        for &u in &steps {
            if u >= p || std::mem::replace(&mut seen[u], true) {
                return Err(Error::Invalid(format!(
                    "a patch order must name each of the {p} units 0..{p} once, got {steps:?}"
                )));
            }
        }
        if steps.len() != p {
            return Err(Error::Invalid(format!(
                "a patch order must name each of the {p} units once, got {} ({steps:?})",
                steps.len()
            )));
        }
        Ok(PatchOrder {
            direction,
            steps: Some(steps),
            source,
        })
    }

    /// The first units of an order being chosen: only sizes up to
    /// `steps.len()` are defined (the search scores them one by one).
    pub fn partial(direction: Direction, steps: Vec<usize>) -> PatchOrder {
        PatchOrder {
            direction,
            steps: Some(steps),
            source: None,
        }
    }

    pub fn is_reference(&self) -> bool {
        self.steps.is_none()
    }

    /// `last`, `first` or `auto`: the name in labels (`last-3`, `auto-3`).
    pub fn name(&self) -> &'static str {
        match self.steps {
            None => self.direction.name(),
            Some(_) => "auto",
        }
    }

    /// The unit indices restored at size `k` (`k < P`).
    pub fn restored(&self, k: usize) -> Vec<usize> {
        match &self.steps {
            None => (0..k).collect(),
            Some(s) => s[..k.min(s.len())].to_vec(),
        }
    }

    /// The steps as student layers (unit keys), in order.
    pub fn keys(&self, plan: &PrunePlan) -> Vec<usize> {
        let units = segments(plan, self.direction).units;
        match &self.steps {
            None => units.iter().map(|u| u.key).collect(),
            Some(s) => s.iter().map(|&u| units[u].key).collect(),
        }
    }

    /// The order as `student_config.json` stores it: the base and the
    /// student layer of each unit in the order they come back.
    pub fn to_json(&self, plan: &PrunePlan) -> Value {
        let mut v = json!({
            "base": self.direction.name(),
            "student_layers": self.keys(plan),
        });
        if let Some(src) = &self.source {
            v["method"] = json!(src.method);
            v["calibration"] = json!({
                "text": src.calibration,
                "tokens": src.tokens,
                "seq_len": src.seq_len,
                "perplexity": src.perplexity,
            });
        }
        v
    }

    /// Read the `patch_order` of a `student_config.json` for `plan`.
    pub fn from_json(v: &Value, plan: &PrunePlan) -> Result<PatchOrder> {
        let bad = |m: String| Error::Invalid(format!("patch_order: {m}"));
        let direction: Direction = v
            .get("base")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("needs \"base\": \"last\" or \"first\"".into()))?
            .parse()?;
        let keys: Vec<usize> = v
            .get("student_layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("needs \"student_layers\", a list of student layers".into()))?
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(format!("student layer {x} is not a layer index")))
            })
            .collect::<Result<_>>()?;
        let units = segments(plan, direction).units;
        let want: Vec<usize> = units.iter().map(|u| u.key).collect();
        let steps = keys
            .iter()
            .map(|k| {
                units.iter().position(|u| u.key == *k).ok_or_else(|| {
                    bad(format!(
                        "student layer {k} is not one whose teacher block a {direction}-based \
                         order restores (those are {want:?})"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let source = v.get("method").and_then(Value::as_str).map(|m| {
            let c = v.get("calibration").cloned().unwrap_or(Value::Null);
            OrderSource {
                method: m.to_string(),
                calibration: c["text"].as_str().unwrap_or("").to_string(),
                tokens: c["tokens"].as_u64().unwrap_or(0) as usize,
                seq_len: c["seq_len"].as_u64().unwrap_or(0) as usize,
                perplexity: c["perplexity"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default(),
            }
        });
        PatchOrder::chosen(plan, direction, steps, source).map_err(|e| {
            bad(format!(
                "{e}; a {direction}-based order lists each of the student layers {want:?} once"
            ))
        })
    }
}

/// One step of the greedy search: the unit chosen and the calibration
/// perplexity of every candidate tried (unit index, perplexity).
#[derive(Clone, Debug, PartialEq)]
pub struct GreedyStep {
    pub chosen: usize,
    pub perplexity: f64,
    pub tried: Vec<(usize, f64)>,
}

/// Choose an order of `p` units greedily: at each size `k = 1 ..= p-1`,
/// restore the unit whose model (`score(restored units)`, lower is better)
/// scores best; ties go to the unit the reference order restores first.
/// The last unit needs no score (`k = p` is the teacher). Scores that are
/// not finite count as worse than any finite one. `p(p+1)/2 - 1` calls.
pub fn greedy(
    p: usize,
    mut score: impl FnMut(&[usize]) -> Result<f64>,
) -> Result<(Vec<usize>, Vec<GreedyStep>)> {
    let mut order: Vec<usize> = Vec::with_capacity(p);
    let mut steps = Vec::new();
    let mut left: Vec<usize> = (0..p).collect();
    while left.len() > 1 {
        let mut tried = Vec::with_capacity(left.len());
        let mut best: Option<(usize, f64)> = None;
        for &u in &left {
            let mut set = order.clone();
            set.push(u);
            let s = score(&set)?;
            tried.push((u, s));
            let key = if s.is_finite() { s } else { f64::INFINITY };
            if best.is_none_or(|(_, b)| key < b) {
                best = Some((u, key));
            }
        }
        let (chosen, perplexity) = best.expect("at least two candidates");
        let perplexity = tried
            .iter()
            .find(|(u, _)| *u == chosen)
            .map_or(perplexity, |x| x.1);
        left.retain(|&u| u != chosen);
        order.push(chosen);
        steps.push(GreedyStep {
            chosen,
            perplexity,
            tried,
        });
    }
    order.extend(left);
    Ok((order, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_partition_the_student() {
        for (l, every, kf, kl) in [
            (36, 2, 1, 2),
            (28, 2, 1, 2),
            (11, 3, 2, 1),
            (30, 2, 7, 8),
            (9, 2, 0, 1),
            (9, 2, 0, 0),
            (4, 2, 1, 2),
        ] {
            let plan = PrunePlan::new(l, every, kf, kl).unwrap();
            for dir in [Direction::Last, Direction::First] {
                let seg = segments(&plan, dir);
                let mut all: Vec<(Range<usize>, Range<usize>)> = seg
                    .units
                    .iter()
                    .map(|u| (u.student.clone(), u.teacher.clone()))
                    .collect();
                all.extend(seg.base_teacher.clone());
                all.sort_by_key(|u| (u.0.start, u.1.start));
                let p = crate::boomerang::PatchPlan::max_k(&plan, dir);
                assert_eq!(seg.units.len(), p, "{l} {dir}");
                if p == 0 {
                    continue;
                }
                // Consecutive, covering students 0..n and teachers 0..l.
                assert_eq!((all[0].0.start, all[0].1.start), (0, 0));
                let last = all.last().unwrap();
                assert_eq!((last.0.end, last.1.end), (plan.num_student_layers(), l));
                for w in all.windows(2) {
                    assert_eq!(
                        w[0].0.end, w[1].0.start,
                        "{l} {every} {kf} {kl} {dir} {all:?}"
                    );
                    assert_eq!(w[0].1.end, w[1].1.start);
                }
                // Each unit holds its key and grows the model.
                for u in &seg.units {
                    assert!(u.student.contains(&u.key), "{u:?}");
                    assert!(u.teacher.len() > u.student.len(), "{u:?}");
                }
                let keys: std::collections::HashSet<usize> =
                    seg.units.iter().map(|u| u.key).collect();
                assert_eq!(keys.len(), p);
            }
        }
    }

    #[test]
    fn chosen_orders_are_permutations() {
        let plan = PrunePlan::new(12, 2, 1, 2).unwrap();
        let p = segments(&plan, Direction::Last).units.len();
        assert_eq!(p, 5);
        assert!(PatchOrder::chosen(&plan, Direction::Last, vec![4, 3, 2, 1, 0], None).is_ok());
        for bad in [vec![0, 1, 2, 3], vec![0, 1, 2, 3, 3], vec![0, 1, 2, 3, 5]] {
            let e = PatchOrder::chosen(&plan, Direction::Last, bad, None).unwrap_err();
            assert!(e.to_string().contains("each of the 5 units"), "{e}");
        }
    }

    #[test]
    fn json_round_trip_by_student_layer() {
        let plan = PrunePlan::new(12, 2, 1, 2).unwrap();
        let src = OrderSource {
            method: "greedy calibration perplexity".into(),
            calibration: "cal.txt".into(),
            tokens: 100,
            seq_len: 50,
            perplexity: vec![9.0, 8.0, 7.0, 6.5],
        };
        for dir in [Direction::Last, Direction::First] {
            let o = PatchOrder::chosen(&plan, dir, vec![2, 0, 4, 1, 3], Some(src.clone())).unwrap();
            let v = o.to_json(&plan);
            assert_eq!(v["base"], dir.name());
            assert_eq!(PatchOrder::from_json(&v, &plan).unwrap(), o);
        }
        // Last-based: copied 0,2,4,6,8,10,11; units by key (student layer).
        let v = json!({"base": "last", "student_layers": [0, 4, 1, 3, 2]});
        let o = PatchOrder::from_json(&v, &plan).unwrap();
        assert_eq!(o.keys(&plan), vec![0, 4, 1, 3, 2]);
        let e = PatchOrder::from_json(
            &json!({"base": "last", "student_layers": [0, 4, 1, 3, 6]}),
            &plan,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("student layer 6") && e.contains("[4, 3, 2, 1, 0]"),
            "{e}"
        );
        let e = PatchOrder::from_json(
            &json!({"base": "last", "student_layers": [0, 4, 1, 3]}),
            &plan,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("once"), "{e}");
        assert!(PatchOrder::from_json(&json!({"student_layers": []}), &plan).is_err());
        assert!(
            PatchOrder::from_json(&json!({"base": "middle", "student_layers": []}), &plan).is_err()
        );
        assert!(
            PatchOrder::from_json(&json!({"base": "last", "student_layers": [-1]}), &plan).is_err()
        );
    }

    #[test]
    fn greedy_takes_the_best_and_breaks_ties_by_reference_order() {
        // Unit u costs w[u] while missing; restoring 3 first is best, then 1.
        let w = [1.0, 5.0, 1.0, 9.0];
        let mut calls = 0;
        let (order, steps) = greedy(4, |set| {
            calls += 1;
            Ok((0..4).filter(|u| !set.contains(u)).map(|u| w[u]).sum())
        })
        .unwrap();
        assert_eq!(order, vec![3, 1, 0, 2]);
        assert_eq!(calls, 4 + 3 + 2);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].perplexity, 7.0);
        assert_eq!(steps[0].tried.len(), 4);
        // Not-a-number never wins over a number.
        let (order, _) = greedy(3, |set| {
            Ok(if set.last() == Some(&0) {
                f64::NAN
            } else {
                set.len() as f64
            })
        })
        .unwrap();
        assert_eq!(order[0], 1);
        // One unit: nothing to score.
        assert_eq!(greedy(1, |_| panic!("no call")).unwrap().0, vec![0]);
        assert_eq!(
            greedy(0, |_| panic!("no call")).unwrap().0,
            Vec::<usize>::new()
        );
        // Errors stop the search.
        assert!(greedy(3, |_| Err(Error::Invalid("x".into()))).is_err());
    }
}
