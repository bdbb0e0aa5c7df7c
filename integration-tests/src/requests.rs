//! The requests tests build over and over, with text keys and values.

use bytes::Bytes;
use sitegrid_proto::v1::{GetRequest, PutRequest, RemoveRequest};

/// `Put` of `value` at `key` of `cache`.
pub fn put(cache: &str, key: &str, value: &str) -> PutRequest {
    PutRequest {
        cache: cache.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// `Remove` of `key` of `cache`.
pub fn remove(cache: &str, key: &str) -> RemoveRequest {
    RemoveRequest {
        cache: cache.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        request_id: String::new(),
    }
}

/// `Get` of `key` of `cache`.
pub fn get(cache: &str, key: &str) -> GetRequest {
    GetRequest {
        cache: cache.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}
