//! Keys and values given on the command line: text, `base64:...`, or `@path`.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

/// Prefix of an argument holding base64-encoded bytes.
pub(crate) const BASE64_PREFIX: &str = "base64:";

/// Why a key or value argument could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// The text after `base64:` is not valid base64.
    #[error("{what} is not valid base64")]
    Base64 {
        /// `key`, `prefix` or `value`.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// The file of an `@path` value could not be read.
    #[error("cannot read value file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A key: `base64:...` decoded, anything else as its UTF-8 bytes.
pub(crate) fn parse_key(arg: &str) -> Result<Bytes, InputError> {
    decode_or_text(arg, "key")
}

/// A key prefix, read like a key.
pub(crate) fn parse_prefix(arg: &str) -> Result<Bytes, InputError> {
    decode_or_text(arg, "prefix")
}

/// A value: `@path` is the file's contents, `base64:...` decoded, anything else as its
/// UTF-8 bytes.
///
/// Reads the file with blocking I/O: this runs once, before any request is in flight.
pub(crate) fn parse_value(arg: &str) -> Result<Bytes, InputError> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|source| InputError::File {
                path: path.into(),
                source,
            }),
        None => decode_or_text(arg, "value"),
    }
}

fn decode_or_text(arg: &str, what: &'static str) -> Result<Bytes, InputError> {
    match arg.strip_prefix(BASE64_PREFIX) {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|source| InputError::Base64 { what, source }),
        None => Ok(Bytes::copy_from_slice(arg.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn plain_text_is_taken_as_its_utf8_bytes() {
        assert_eq!(parse_key("user-1").unwrap(), "user-1");
        assert_eq!(parse_value("héllo").unwrap(), "héllo".as_bytes());
    }

    #[test]
    fn base64_prefixed_arguments_are_decoded_to_raw_bytes() {
        assert_eq!(parse_key("base64:AP8=").unwrap(), &[0x00, 0xff][..]);
        assert_eq!(parse_value("base64:aGk=").unwrap(), "hi");
    }

    #[test]
    fn invalid_base64_names_the_argument() {
        let error = parse_key("base64:!!").unwrap_err();
        assert!(matches!(error, InputError::Base64 { what: "key", .. }));
        assert_eq!(error.to_string(), "key is not valid base64");
    }

    #[test]
    fn at_path_values_are_read_from_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[1, 2, 3, 0xff]).unwrap();
        let arg = format!("@{}", file.path().display());
        assert_eq!(parse_value(&arg).unwrap(), &[1, 2, 3, 0xff][..]);
    }

    #[test]
    fn a_missing_value_file_is_an_error_naming_it() {
        let error = parse_value("@/nonexistent/sitegrid-value").unwrap_err();
        assert!(
            matches!(&error, InputError::File { path, .. } if path.to_str() == Some("/nonexistent/sitegrid-value"))
        );
    }

    #[test]
    fn keys_starting_with_at_are_plain_text() {
        assert_eq!(parse_key("@home").unwrap(), "@home");
    }
}
