//! The back office's configuration: `office.toml` in the office directory, written once by
//! `iccard office init` and read by every later command.
//!
//! It names the database, the issuer, the mode and the keystore, and never holds a secret:
//! passphrases, PINs and (optionally) the database URL come from environment variables whose
//! *names* the file records. Relative paths (`sqlite://office.db`, `keys.iks`) are resolved
//! against the office directory, so the directory can be moved as a whole.
//!
//! ```toml
//! issuer_number = "31000001"
//! mode = "production"
//! console_machine = "C0001"
//! database_url = "sqlite://office.db"   # or database_url_env = "ICCARD_DATABASE_URL"
//!
//! [keystore]
//! kind = "local"                        # "local", "pkcs11" or "development"
//! path = "keys.iks"
//! passphrase_env = "ICCARD_KEYSTORE_PASSPHRASE"
//! ```
//!
//! A production configuration with the development keystore is refused when it is loaded,
//! whoever wrote the file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keystore::{DevKeystore, Keystore, KsResult, LocalKeystore, Passphrase};
use crate::office::Mode;
use crate::pkcs11::{Pkcs11Config, Pkcs11Keystore};

/// The configuration file's name inside the office directory.
pub const CONFIG_FILE: &str = "office.toml";
/// Default environment variable holding the local keystore's passphrase.
pub const PASSPHRASE_ENV: &str = "ICCARD_KEYSTORE_PASSPHRASE";
/// Default environment variable holding the PKCS#11 user PIN.
pub const PIN_ENV: &str = "ICCARD_PKCS11_PIN";

/// What loading or saving the configuration refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No configuration in the directory.
    #[error("no back office in {dir}: run `iccard office init --office {dir}` first, or point --office (or ICCARD_OFFICE) at the office directory")]
    Missing {
        /// The office directory.
        dir: PathBuf,
    },
    /// `init` on a directory that already holds a configuration.
    #[error("{path} exists: this directory already holds a back office; choose another --office directory")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid.
    #[error("{path} is not a valid office configuration: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Production with the development key set.
    #[error("{path}: a production back office cannot use the development key set; configure a local or PKCS#11 keystore")]
    DevKeysInProduction {
        /// The file.
        path: PathBuf,
    },
    /// An environment variable the configuration names is unset.
    #[error("environment variable {var} is not set: it must hold {what}")]
    MissingEnv {
        /// The variable.
        var: String,
        /// What it must hold.
        what: &'static str,
    },
}

/// Where the issuer's keys are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeystoreConfig {
    /// An encrypted keystore file ([`LocalKeystore`]).
    Local {
        /// The file (relative to the office directory unless absolute).
        path: PathBuf,
        /// The environment variable holding its passphrase (a prompt when unset and
        /// interactive).
        passphrase_env: String,
    },
    /// A PKCS#11 token ([`Pkcs11Keystore`]).
    Pkcs11 {
        /// The PKCS#11 module (shared library).
        module: PathBuf,
        /// The token's label.
        token_label: String,
        /// The environment variable holding the user PIN (a prompt when unset and
        /// interactive).
        pin_env: String,
    },
    /// The published development key set ([`DevKeystore`]): development mode only.
    Development,
}

impl KeystoreConfig {
    /// The environment variable naming this keystore's secret, if it has one.
    pub fn secret_env(&self) -> Option<&str> {
        match self {
            KeystoreConfig::Local { passphrase_env, .. } => Some(passphrase_env),
            KeystoreConfig::Pkcs11 { pin_env, .. } => Some(pin_env),
            KeystoreConfig::Development => None,
        }
    }

    /// A short description for reports (no secret).
    pub fn describe(&self, dir: &Path) -> String {
        match self {
            KeystoreConfig::Local { path, .. } => {
                format!("local file {}", resolve(dir, path).display())
            }
            KeystoreConfig::Pkcs11 {
                module,
                token_label,
                ..
            } => format!("PKCS#11 token {token_label:?} via {}", module.display()),
            KeystoreConfig::Development => "development key set".into(),
        }
    }
}

/// The contents of `office.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficeConfig {
    /// The issuer number (as stored in the database).
    pub issuer_number: String,
    /// Production or development.
    pub mode: Mode,
    /// The machine number of the office console `init` registered: the default `--machine`.
    pub console_machine: String,
    /// The database URL (`sqlite://PATH`, relative to the office directory, or
    /// `postgres://...`). Exactly one of this and `database_url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// The environment variable holding the database URL (for URLs with a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_env: Option<String>,
    /// The keystore.
    pub keystore: KeystoreConfig,
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

impl OfficeConfig {
    /// Reads `DIR/office.toml` and validates it.
    pub fn load(dir: &Path) -> Result<OfficeConfig, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing {
                    dir: dir.to_path_buf(),
                })
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let config: OfficeConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            why: e.message().to_owned(),
        })?;
        config.validate(&path)?;
        Ok(config)
    }

    /// Checks the rules a hand-edited file could break.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |why: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            why: why.into(),
        };
        if self.database_url.is_some() == self.database_url_env.is_some() {
            return Err(invalid(
                "give exactly one of database_url and database_url_env",
            ));
        }
        if self.mode == Mode::Production && self.keystore == KeystoreConfig::Development {
            return Err(ConfigError::DevKeysInProduction {
                path: path.to_path_buf(),
            });
        }
        if let Some(var) = self.keystore.secret_env() {
            if var.is_empty() {
                return Err(invalid(
                    "the keystore's secret environment variable name is empty",
                ));
            }
        }
        Ok(())
    }

    /// Writes `DIR/office.toml` (creating `DIR`), refusing to replace an existing one; the
    /// file appears complete or not at all.
    pub fn save_new(&self, dir: &Path) -> Result<PathBuf, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        self.validate(&path)?;
        let io = |source| ConfigError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        if path.exists() {
            return Err(ConfigError::Exists { path });
        }
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(b"# iccard back office configuration, written by `iccard office init`.\n# It holds no secret: passphrases and PINs come from the environment variables named here.\n")
            .and_then(|()| f.write_all(text.as_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        drop(f);
        // hard_link fails if the target exists: no race with a concurrent init.
        fs::hard_link(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ConfigError::Exists { path: path.clone() }
            } else {
                io(e)
            }
        })?;
        fs::remove_file(&tmp).map_err(io)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// The database URL, relative SQLite paths resolved against `dir`.
    pub fn database_url(&self, dir: &Path) -> Result<String, ConfigError> {
        let url = match (&self.database_url, &self.database_url_env) {
            (Some(u), _) => u.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| ConfigError::MissingEnv {
                var: var.clone(),
                what: "the database URL",
            })?,
            (None, None) => {
                return Err(ConfigError::Invalid {
                    path: dir.join(CONFIG_FILE),
                    why: "no database_url".into(),
                })
            }
        };
        Ok(resolve_sqlite_url(dir, &url))
    }

    /// Opens the configured keystore with `secret` (the passphrase or PIN; ignored by the
    /// development set). The development set is refused in production.
    pub fn open_keystore(
        &self,
        dir: &Path,
        secret: Option<&Passphrase>,
    ) -> KsResult<Box<dyn Keystore + Send>> {
        let need = || crate::keystore::KeystoreError::Invalid {
            what: "keystore secret",
            why: "none given: set the environment variable the configuration names".into(),
        };
        Ok(match &self.keystore {
            KeystoreConfig::Local { path, .. } => Box::new(LocalKeystore::open(
                &resolve(dir, path),
                secret.ok_or_else(need)?,
            )?),
            KeystoreConfig::Pkcs11 {
                module,
                token_label,
                ..
            } => Box::new(Pkcs11Keystore::open(
                &Pkcs11Config {
                    module: module.clone(),
                    token_label: token_label.clone(),
                },
                secret.ok_or_else(need)?,
            )?),
            KeystoreConfig::Development => Box::new(DevKeystore::new(self.mode)?),
        })
    }

    /// The local keystore file's full path, if the keystore is local.
    pub fn local_keystore_path(&self, dir: &Path) -> Option<PathBuf> {
        match &self.keystore {
            KeystoreConfig::Local { path, .. } => Some(resolve(dir, path)),
            _ => None,
        }
    }
}

/// `sqlite://relative/path` → `sqlite://DIR/relative/path`; other URLs unchanged.
pub fn resolve_sqlite_url(dir: &Path, url: &str) -> String {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return url.to_owned();
    };
    let (file, query) = match rest.split_once('?') {
        Some((f, q)) => (f, Some(q)),
        None => (rest, None),
    };
    if file.is_empty() || file.starts_with('/') || file == ":memory:" {
        return url.to_owned();
    }
    let full = dir.join(file);
    match query {
        Some(q) => format!("sqlite://{}?{q}", full.display()),
        None => format!("sqlite://{}", full.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> OfficeConfig {
        OfficeConfig {
            issuer_number: "31000001".into(),
            mode: Mode::Development,
            console_machine: "C0001".into(),
            database_url: Some("sqlite://office.db".into()),
            database_url_env: None,
            keystore: KeystoreConfig::Development,
        }
    }

    #[test]
    fn saves_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = dev();
        c.save_new(dir.path()).unwrap();
        assert_eq!(OfficeConfig::load(dir.path()).unwrap(), c);
        assert!(matches!(
            c.save_new(dir.path()),
            Err(ConfigError::Exists { .. })
        ));
        let url = c.database_url(dir.path()).unwrap();
        assert_eq!(url, format!("sqlite://{}/office.db", dir.path().display()));
    }

    #[test]
    fn production_with_development_keys_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let text = toml::to_string(&dev())
            .unwrap()
            .replace("development\"\nconsole", "production\"\nconsole");
        assert!(text.contains("mode = \"production\""), "{text}");
        fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        let err = OfficeConfig::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, ConfigError::DevKeysInProduction { .. }),
            "{err}"
        );
        let mut c = dev();
        c.mode = Mode::Production;
        assert!(matches!(
            c.save_new(&dir.path().join("other")),
            Err(ConfigError::DevKeysInProduction { .. })
        ));
        assert!(!dir.path().join("other").join(CONFIG_FILE).exists());
    }

    #[test]
    fn missing_and_malformed_files_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = OfficeConfig::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("iccard office init"), "{err}");
        fs::write(dir.path().join(CONFIG_FILE), "issuer_number = 5\n").unwrap();
        let err = OfficeConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let mut c = dev();
        c.database_url_env = Some("X".into());
        assert!(matches!(
            c.save_new(dir.path()),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn sqlite_urls_resolve_against_the_directory() {
        let d = Path::new("/srv/office");
        assert_eq!(
            resolve_sqlite_url(d, "sqlite://db/o.db?mode=rwc"),
            "sqlite:///srv/office/db/o.db?mode=rwc"
        );
        assert_eq!(
            resolve_sqlite_url(d, "sqlite:///abs.db"),
            "sqlite:///abs.db"
        );
        assert_eq!(
            resolve_sqlite_url(d, "postgres://u@h/db"),
            "postgres://u@h/db"
        );
    }
}
