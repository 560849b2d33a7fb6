//! `student_config.json`: the teacher layers a student was made from,
//! `{"pruned_teacher_layers": [...], "copied_teacher_layers": [...]}`
//! (exactly the reference's key names; published students carry it), and
//! optionally the `patch_order` that `boomgpu patch --order auto` chose
//! (see [`PatchOrder::to_json`]), which chat, eval and patch then follow.

use std::path::Path;

use serde_json::{json, Value};

use super::order::PatchOrder;
use super::plan::{PruneParams, PrunePlan};
use crate::error::{Error, Result};

pub const FILE_NAME: &str = "student_config.json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StudentConfig {
    pub pruned_teacher_layers: Vec<usize>,
    pub copied_teacher_layers: Vec<usize>,
    /// A chosen patch order, as written (checked by [`StudentConfig::order`]).
    pub patch_order: Option<Value>,
}

/// Where a [`PrunePlan`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanSource {
    /// The student's `student_config.json`.
    File,
    /// Rebuilt from `--every/--keep-first/--keep-last` (no file).
    Rebuilt(PruneParams),
}

fn layer_list(v: &Value, key: &str) -> Result<Vec<usize>> {
    let bad = || {
        Error::Invalid(format!(
            "{FILE_NAME}: '{key}' must be a list of non-negative integers"
        ))
    };
    v.get(key)
        .ok_or_else(|| Error::Invalid(format!("{FILE_NAME}: no '{key}'")))?
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(bad))
        .collect()
}

impl StudentConfig {
    pub fn from_plan(plan: &PrunePlan) -> StudentConfig {
        StudentConfig {
            pruned_teacher_layers: plan.pruned.clone(),
            copied_teacher_layers: plan.copied.clone(),
            patch_order: None,
        }
    }

    /// With a chosen patch order for this plan.
    pub fn with_order(mut self, plan: &PrunePlan, order: &PatchOrder) -> StudentConfig {
        self.patch_order = (!order.is_reference()).then(|| order.to_json(plan));
        self
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "pruned_teacher_layers": self.pruned_teacher_layers,
            "copied_teacher_layers": self.copied_teacher_layers,
        });
        if let Some(o) = &self.patch_order {
            v["patch_order"] = o.clone();
        }
        v
    }

    /// The stored patch order, checked against `plan` (the plan of this
    /// file's own lists); `None` when there is none.
    pub fn order(&self, plan: &PrunePlan) -> Result<Option<PatchOrder>> {
        self.patch_order
            .as_ref()
            .map(|v| PatchOrder::from_json(v, plan))
            .transpose()
            .map_err(|e| Error::Invalid(format!("{FILE_NAME}: {e}")))
    }

    pub fn from_json(v: &Value) -> Result<StudentConfig> {
        Ok(StudentConfig {
            pruned_teacher_layers: layer_list(v, "pruned_teacher_layers")?,
            copied_teacher_layers: layer_list(v, "copied_teacher_layers")?,
            patch_order: v.get("patch_order").filter(|o| !o.is_null()).cloned(),
        })
    }

    pub fn parse(text: &str) -> Result<StudentConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("{FILE_NAME}: not valid JSON: {e}")))?;
        StudentConfig::from_json(&v)
    }

    pub fn read(path: &Path) -> Result<StudentConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        StudentConfig::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON of integers");
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// The checked plan for a teacher of `num_teacher_layers` layers.
    pub fn plan(&self, num_teacher_layers: usize) -> Result<PrunePlan> {
        PrunePlan::from_lists(
            num_teacher_layers,
            self.pruned_teacher_layers.clone(),
            self.copied_teacher_layers.clone(),
        )
    }

    /// The patch order stored in the `student_config.json` of
    /// `student_dir`, checked against `plan` (the student's plan); `None`
    /// when the folder has no such file or the file no order.
    pub fn load_order(student_dir: &Path, plan: &PrunePlan) -> Result<Option<PatchOrder>> {
        let path = student_dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        StudentConfig::read(&path)?
            .order(plan)
            .map_err(|e| Error::Invalid(format!("{}: {e}", student_dir.display())))
    }

    /// The plan of the student in `student_dir` for a teacher with
    /// `num_teacher_layers` layers: from its `student_config.json`, or, when
    /// the file is missing, rebuilt from `params` (the command's
    /// `--every/--keep-first/--keep-last`, `None` when none was given).
    /// `student_layers` (the student's `num_hidden_layers`) is checked
    /// against the plan either way.
    pub fn load_plan(
        student_dir: &Path,
        num_teacher_layers: usize,
        student_layers: usize,
        params: Option<PruneParams>,
    ) -> Result<(PrunePlan, PlanSource)> {
        let path = student_dir.join(FILE_NAME);
        let (plan, source) = if path.exists() {
            let plan = StudentConfig::read(&path)?
                .plan(num_teacher_layers)
                .map_err(|e| Error::Invalid(format!("{}: {e}", student_dir.display())))?;
            (plan, PlanSource::File)
        } else {
            let Some(p) = params else {
                return Err(Error::Invalid(format!(
                    "{}: no {FILE_NAME}, so boomgpu does not know which teacher layers this \
                     student kept; pass the pruning it was made with as \
                     --every/--keep-first/--keep-last (the reference's defaults are {})",
                    student_dir.display(),
                    PruneParams::default()
                )));
            };
            let plan = PrunePlan::from_params(num_teacher_layers, p)?;
            (plan, PlanSource::Rebuilt(p))
        };
        if plan.num_student_layers() != student_layers {
            let how = match source {
                PlanSource::File => format!("its {FILE_NAME} copies"),
                PlanSource::Rebuilt(p) => format!("{p} gives"),
            };
            return Err(Error::Invalid(format!(
                "{}: the student has {student_layers} layers but {how} {} teacher layers \
                 (of {num_teacher_layers}); is this the student of another teacher?{}",
                student_dir.display(),
                plan.num_student_layers(),
                if source == PlanSource::File {
                    ""
                } else {
                    " Otherwise pass the --every/--keep-first/--keep-last it was made with"
                }
            )));
        }
        Ok((plan, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("boomgpu-sc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_with_reference_keys() {
        let plan = PrunePlan::new(6, 2, 1, 2).unwrap();
        let sc = StudentConfig::from_plan(&plan);
        let v = sc.to_json();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&String> = obj.keys().collect();
        keys.sort();
        assert_eq!(keys, ["copied_teacher_layers", "pruned_teacher_layers"]);
        assert_eq!(v["pruned_teacher_layers"], json!([1, 3]));
        assert_eq!(v["copied_teacher_layers"], json!([0, 2, 4, 5]));
        // The reference writes json.dump(...) on one line.
        let sc2 = StudentConfig::parse(
            r#"{"pruned_teacher_layers": [1, 3], "copied_teacher_layers": [0, 2, 4, 5]}"#,
        )
        .unwrap();
        assert_eq!(sc, sc2);
        assert_eq!(sc2.plan(6).unwrap(), plan);
        assert!(StudentConfig::parse(r#"{"pruned_teacher_layers": [1]}"#).is_err());
        assert!(StudentConfig::parse(
            r#"{"pruned_teacher_layers": [-1], "copied_teacher_layers": [0]}"#
        )
        .is_err());
    }

    #[test]
    fn a_stored_order_survives_the_file_and_is_checked() {
        let d = tmpdir("order");
        let plan = PrunePlan::new(12, 2, 1, 2).unwrap();
        assert_eq!(StudentConfig::load_order(&d, &plan).unwrap(), None);
        let sc = StudentConfig::from_plan(&plan);
        sc.write(&d.join(FILE_NAME)).unwrap();
        assert_eq!(StudentConfig::load_order(&d, &plan).unwrap(), None);
        let o = PatchOrder::chosen(
            &plan,
            crate::boomerang::Direction::Last,
            vec![1, 0, 4, 2, 3],
            None,
        )
        .unwrap();
        let sc = sc.with_order(&plan, &o);
        sc.write(&d.join(FILE_NAME)).unwrap();
        assert_eq!(StudentConfig::load_order(&d, &plan).unwrap(), Some(o));
        // The reference's keys are unchanged beside it.
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(v["copied_teacher_layers"], json!(plan.copied));
        assert_eq!(v["patch_order"]["student_layers"], json!([3, 4, 0, 2, 1]));
        // A broken order is refused with the folder and the fix.
        std::fs::write(
            d.join(FILE_NAME),
            r#"{"pruned_teacher_layers": [1,3,5,7,9], "copied_teacher_layers": [0,2,4,6,8,10,11],
                "patch_order": {"base": "last", "student_layers": [3, 4, 0, 2, 2]}}"#,
        )
        .unwrap();
        let e = StudentConfig::load_order(&d, &plan)
            .unwrap_err()
            .to_string();
        assert!(e.contains("patch_order") && e.contains("once"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn file_or_rebuilt_or_error() {
        let d = tmpdir("load");
        let e = StudentConfig::load_plan(&d, 6, 4, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--every/--keep-first/--keep-last")
                && e.contains("--every 2 --keep-first 1 --keep-last 2"),
            "{e}"
        );
        let (plan, src) = StudentConfig::load_plan(&d, 6, 4, Some(PruneParams::default())).unwrap();
        assert_eq!(plan.copied, vec![0, 2, 4, 5]);
        assert_eq!(src, PlanSource::Rebuilt(PruneParams::default()));
        let e = StudentConfig::load_plan(&d, 6, 5, Some(PruneParams::default()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 5 layers"), "{e}");

        StudentConfig::from_plan(&plan)
            .write(&d.join(FILE_NAME))
            .unwrap();
        let (p2, src) = StudentConfig::load_plan(&d, 6, 4, None).unwrap();
        assert_eq!((p2, src), (plan, PlanSource::File));
        // A student of a deeper teacher.
        assert!(StudentConfig::load_plan(&d, 8, 4, None).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
