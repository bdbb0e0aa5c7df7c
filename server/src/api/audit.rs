//! The audit log: one JSON line per admin operation (`Clear`, site operations), allowed
//! or refused, with who, from where, what, when and the outcome. It is appended to a
//! file of its own (`security.audit_log`, default `<data_dir>/audit.log`) and written
//! to the node's log too (target `sitegrid::audit`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;

use sitegrid_proto::ErrorCode;

use crate::api::auth::Caller;
use crate::error::{Error, Result};

/// How the audit log writes a request's outcome: `ok`, or its error code.
pub(crate) fn outcome<T>(result: &std::result::Result<T, tonic::Status>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(status) => ErrorCode::from_grpc(status.code()).as_str(),
    }
}

/// An append-only audit file.
#[derive(Debug)]
pub(crate) struct Audit {
    path: PathBuf,
    file: Mutex<File>,
}

impl Audit {
    /// Opens (creating it and its directory if needed) the file at `path` for appending.
    pub(crate) fn open(path: &Path) -> Result<Audit> {
        let io = |source| Error::Io {
            context: format!("cannot open the audit log {}", path.display()),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Audit {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Records that `caller` asked for `operation` on `target` and what came of it
    /// (`ok`, or the error code).
    pub(crate) fn record(&self, caller: &Caller, operation: &str, target: &str, outcome: &str) {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let principal = caller.name();
        let address = caller.address.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(target: "sitegrid::audit", %principal, %address, operation, target,
            outcome, "audit");
        let line = serde_json::json!({
            "time": time,
            "principal": principal,
            "address": address,
            "operation": operation,
            "target": target,
            "outcome": outcome,
        });
        let mut file = self.file.lock();
        // Admin operations are rare; a short blocking append keeps the order of lines.
        if let Err(error) = writeln!(file, "{line}") {
            tracing::error!(path = %self.path.display(), %error, "cannot write the audit log");
        }
    }
}
