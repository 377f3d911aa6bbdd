//! Opening the files a VM writes (`--serial-file`, `--report`) so that an
//! operator's typo cannot destroy data.
//!
//! The rules, and why:
//! - An output is never a file the VM reads: a disk image or the kernel of the
//!   same VM (compared by device and inode, so a symlink or a second path to
//!   the image is caught too). `--serial-file disk.img` used to truncate the
//!   image to the console output; no flag allows it.
//! - An existing non-empty regular file is not replaced unless the operator
//!   asks (`--overwrite`, `"overwrite": true`): a VMM that silently truncates
//!   yesterday's log or report is a VMM that silently truncates the wrong
//!   file. A missing or empty file is created/written as usual.
//! - Anything that is not a regular file (a pipe, a terminal, `/dev/null`,
//!   `/dev/stderr`) is opened for writing without truncation: that is how
//!   such outputs are used, and truncating them means nothing.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::image::FileId;

/// Why an output file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path names one of the VM's inputs.
    #[error("{}: is {what} of this VM; refusing to write {output} over it", path.display())]
    IsInput {
        /// The output path.
        path: PathBuf,
        /// Which output it is (e.g. "the serial console").
        output: &'static str,
        /// Which input it is (e.g. "a disk image").
        what: &'static str,
    },
    /// An existing non-empty regular file, and no permission to replace it.
    #[error(
        "{}: exists and is not empty; refusing to overwrite it with {output} \
         (pass --overwrite, or choose a new file)",
        path.display()
    )]
    Exists {
        /// The output path.
        path: PathBuf,
        /// Which output it is.
        output: &'static str,
    },
    /// The kernel refused.
    #[error("{}: opening for {output}: {source}", path.display())]
    Open {
        /// The output path.
        path: PathBuf,
        /// Which output it is.
        output: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// A file the VM must never write: what it is, and its identity.
#[derive(Clone, Copy, Debug)]
pub struct Protected {
    /// What the file is to the VM ("a disk image", "the kernel").
    pub what: &'static str,
    /// Its identity.
    pub id: FileId,
}

/// Opens `path` for `output` by the rules above; `protected` are the VM's
/// inputs; `overwrite` lets an existing non-empty regular file be truncated.
pub fn open_output(
    path: &Path,
    output: &'static str,
    protected: &[Protected],
    overwrite: bool,
) -> Result<File, OutputError> {
    let open_err = |source| OutputError::Open {
        path: path.to_owned(),
        output,
        source,
    };
    let existing = match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(open_err(e)),
    };
    if let Some(meta) = &existing {
        check_not_input(path, output, FileId::of(meta), protected)?;
        if meta.is_file() && meta.len() > 0 && !overwrite {
            return Err(OutputError::Exists {
                path: path.to_owned(),
                output,
            });
        }
    }
    let regular = existing.as_ref().is_none_or(|m| m.is_file());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        // Truncate only a regular file the operator let us replace (an empty
        // one has nothing to lose either way).
        .truncate(regular)
        .open(path)
        .map_err(open_err)?;
    // The path may have been replaced since the look: check what was opened.
    let meta = file.metadata().map_err(open_err)?;
    check_not_input(path, output, FileId::of(&meta), protected)?;
    Ok(file)
}

fn check_not_input(
    path: &Path,
    output: &'static str,
    id: FileId,
    protected: &[Protected],
) -> Result<(), OutputError> {
    match protected.iter().find(|p| p.id == id) {
        Some(p) => Err(OutputError::IsInput {
            path: path.to_owned(),
            output,
            what: p.what,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_disk_image_is_never_an_output_even_with_overwrite() {
        let img = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(img.path(), [0x55u8; 4096]).unwrap();
        let protected = [Protected {
            what: "a disk image",
            id: FileId::of_path(img.path()).unwrap(),
        }];
        for overwrite in [false, true] {
            let err =
                open_output(img.path(), "the serial console", &protected, overwrite).unwrap_err();
            assert!(matches!(err, OutputError::IsInput { .. }), "{err}");
        }
        assert_eq!(std::fs::read(img.path()).unwrap(), vec![0x55u8; 4096]);
    }

    #[test]
    fn existing_output_is_kept_unless_overwrite_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, b"yesterday").unwrap();
        let err = open_output(&path, "the serial console", &[], false).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"yesterday");
        let mut f = open_output(&path, "the serial console", &[], true).unwrap();
        f.write_all(b"today").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"today");
        // New and empty files need no permission.
        open_output(&dir.path().join("new"), "a report", &[], false).unwrap();
        std::fs::write(&path, b"").unwrap();
        open_output(&path, "a report", &[], false).unwrap();
    }

    #[test]
    fn non_regular_outputs_are_written_without_truncation() {
        open_output(Path::new("/dev/null"), "a report", &[], false).unwrap();
    }
}
