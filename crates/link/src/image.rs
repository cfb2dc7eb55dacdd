//! Card image files: the EEPROM of a card on the host's disk.
//!
//! The bytes are [`iccard_cos::nvm::encode_image`]'s (format version, geometry, EEPROM,
//! per-page cycle counters, checksum). Saving replaces the file atomically: the new image is
//! written to a temporary file in the same directory, fsynced, renamed over the old one, and the
//! directory is fsynced, so a process killed at any instant leaves either the old image or the
//! new one, never a mixture.

use iccard_cos::nvm::{decode_image, encode_image, ImageError, SimEeprom};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a card image file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// Reading or writing the file failed.
    #[error("card image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a valid card image.
    #[error("card image {path} is unusable: {source} (it was not changed; restore it from a copy or make a new card)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ImageError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageFileError + '_ {
    move |source| ImageFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and checks a card image.
pub fn load_image(path: &Path) -> Result<SimEeprom, ImageFileError> {
    let bytes = fs::read(path).map_err(io(path))?;
    decode_image(&bytes).map_err(|source| ImageFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a card image atomically (write, fsync, rename, fsync the directory).
pub fn save_image(path: &Path, eeprom: &SimEeprom) -> Result<(), ImageFileError> {
    let bytes = encode_image(eeprom);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "card".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(&dir) {
            // Some filesystems refuse fsync on a directory; the rename is still atomic there.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}
