//! Output folders written atomically: everything goes to `<out>.tmp-<pid>`
//! next to `--out` and is renamed into place at the end, so an interrupted
//! run leaves no half-written model. A non-empty `--out` is replaced only
//! with `--force`, and never when it is (or holds) one of the inputs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn is_empty_dir(p: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .next()
        .is_none())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut name = p.file_name().expect("checked").to_os_string();
    name.push(suffix);
    p.with_file_name(name)
}

/// An output folder being built. Dropping it without [`OutDir::commit`]
/// removes the temporary folder.
pub struct OutDir {
    out: PathBuf,
    tmp: Option<PathBuf>,
    replace: bool,
}

impl OutDir {
    /// Check `out` and create its temporary folder. `inputs` are folders
    /// `out` must not be or contain, named by what they are ("teacher").
    pub fn prepare(out: &Path, force: bool, inputs: &[(&str, &Path)]) -> Result<OutDir> {
        if out.file_name().is_none() {
            return Err(Error::Invalid(format!(
                "--out {}: give a folder name",
                out.display()
            )));
        }
        let mut replace = false;
        if out.exists() {
            if !out.is_dir() {
                return Err(Error::Invalid(format!(
                    "--out {} is a file; give a folder",
                    out.display()
                )));
            }
            let o = out.canonicalize().map_err(|e| Error::io(out, e))?;
            for (what, dir) in inputs {
                let d = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
                if d.starts_with(&o) {
                    return Err(Error::Invalid(format!(
                        "--out {} holds the {what}; choose another folder",
                        out.display()
                    )));
                }
            }
            if !is_empty_dir(out)? {
                if !force {
                    return Err(Error::Invalid(format!(
                        "--out {} exists and is not empty; pass --force to replace it",
                        out.display()
                    )));
                }
                replace = true;
            }
        }
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = with_suffix(out, &format!(".tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(OutDir {
            out: out.to_path_buf(),
            tmp: Some(tmp),
            replace,
        })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        self.tmp.as_deref().expect("not committed")
    }

    /// Write `model.safetensors` from `tensors`; returns their dtype
    /// names, sorted and without repeats.
    pub fn write_weights(
        &self,
        tensors: std::collections::BTreeMap<String, crate::boomerang::init::OutTensor<'_>>,
    ) -> Result<Vec<String>> {
        let mut dtypes: Vec<String> = tensors
            .values()
            .map(|t| format!("{:?}", t.dtype).to_lowercase())
            .collect();
        dtypes.sort();
        dtypes.dedup();
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let path = self.path().join("model.safetensors");
        safetensors::serialize_to_file(tensors, Some(metadata), &path)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(dtypes)
    }

    /// Copy those of `names` that exist in `dir` (tokenizer, generation
    /// settings); returns the names copied.
    pub fn copy_files(&self, dir: &Path, names: &[&str]) -> Result<Vec<String>> {
        let mut copied = Vec::new();
        for name in names {
            let src = dir.join(name);
            if src.is_file() {
                std::fs::copy(&src, self.path().join(name)).map_err(|e| Error::io(&src, e))?;
                copied.push(name.to_string());
            }
        }
        Ok(copied)
    }

    /// Move the finished folder into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let tmp = self.tmp.clone().expect("not committed");
        let out = self.out.clone();
        if out.exists() {
            if self.replace {
                let old = with_suffix(&out, &format!(".old-{}", std::process::id()));
                std::fs::rename(&out, &old).map_err(|e| Error::io(&out, e))?;
                std::fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))?;
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            } else {
                std::fs::remove_dir(&out).map_err(|e| Error::io(&out, e))?;
                std::fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))?;
            }
        } else {
            std::fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))?;
        }
        self.tmp = None;
        Ok(out)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if let Some(p) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
