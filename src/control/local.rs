//! The local bundle file (`[model] bundle`): what a daemon serves until the control topic can
//! be read, and what bootstraps a control topic that has activated nothing.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::bundle::Bundle;

/// The local bundle file, with its SHA-256.
pub struct LocalBundle {
    /// The bundle.
    pub bundle: Bundle,
    /// The file's SHA-256, hex.
    pub sha256: String,
}

impl LocalBundle {
    /// Reads `[model] bundle` (`path`, named in the config at `config_path`): a full bundle.
    /// A delta is refused: it belongs on the control topic, on top of its base.
    pub fn read(config_path: &Path, path: &Path) -> Result<Self> {
        let usage =
            |e: String| Error::Usage(format!("{}: [model] bundle: {e}", config_path.display()));
        let bytes = std::fs::read(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        let bundle =
            Bundle::from_avro(&bytes).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        if crate::model::delta::is_delta(&bundle) {
            return Err(usage(format!(
                "{} is a delta of {}; serve a full bundle, or publish the delta on the control topic",
                path.display(),
                bundle.base_version.as_deref().unwrap_or("?")
            )));
        }
        Ok(LocalBundle {
            sha256: super::assembly::sha256_hex(&bytes),
            bundle,
        })
    }
}
