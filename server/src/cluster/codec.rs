//! Store types to and from the internal replication messages.

use std::sync::Arc;

use bytes::Bytes;
use sitegrid_proto::v1;

use crate::error::{Error, Result};
use crate::store::Services;
use crate::store::cache::{Condition, NewValue, Touch, WriteOp, WriteRequest, WriteResult};
use crate::store::entry::Slot;
use crate::store::mutation::Mutation;
use crate::store::record;
use crate::store::replication::ReceivedChange;

/// A slot as a stored record.
pub(crate) fn encode_slot(slot: &Slot) -> Bytes {
    Bytes::from(record::encode(slot))
}

/// A stored record as a slot; a damaged one is a peer's bug, reported as internal.
pub(crate) fn decode_slot(bytes: &[u8], services: &Services) -> Result<Slot> {
    record::decode(bytes, &|name| services.intern_site(name))
        .map_err(|_| Error::Internal("a peer sent a damaged record"))
}

/// A write's answer for the wire.
pub(crate) fn encode_answer(answer: &WriteResult) -> v1::WriteAnswer {
    v1::WriteAnswer {
        applied: answer.applied,
        version: answer.version,
        previous: answer
            .previous
            .as_ref()
            .map(|entry| encode_slot(&Slot::Live(entry.clone())))
            .unwrap_or_default(),
    }
}

/// A write's answer from the wire.
pub(crate) fn decode_answer(answer: &v1::WriteAnswer, services: &Services) -> Result<WriteResult> {
    let previous = if answer.previous.is_empty() {
        None
    } else {
        match decode_slot(&answer.previous, services)? {
            Slot::Live(entry) => Some(entry),
            Slot::Tombstone(_) => {
                return Err(Error::Internal("a previous entry that is a tombstone"));
            }
        }
    };
    Ok(WriteResult {
        applied: answer.applied,
        version: answer.version,
        previous,
    })
}

/// A change for the wire.
pub(crate) fn encode_mutation(
    mutation: &Mutation,
    request_id: Option<&str>,
    answer: Option<&WriteResult>,
) -> v1::ReplicatedMutation {
    v1::ReplicatedMutation {
        key: mutation.key.clone(),
        prev: mutation.prev,
        record: encode_slot(&mutation.slot()),
        request_id: request_id.unwrap_or_default().to_string(),
        answer: answer.map(encode_answer),
        undoes: mutation.undoes,
    }
}

/// A change from the wire, with its request id and answer.
pub(crate) fn decode_mutation(
    mutation: v1::ReplicatedMutation,
    services: &Services,
) -> Result<ReceivedChange> {
    let slot = decode_slot(&mutation.record, services)?;
    let answer = match (mutation.request_id.is_empty(), mutation.answer) {
        (false, Some(answer)) => Some((
            mutation.request_id,
            Arc::new(decode_answer(&answer, services)?),
        )),
        _ => None,
    };
    Ok(ReceivedChange {
        mutation: Mutation {
            key: Bytes::copy_from_slice(&mutation.key),
            prev: mutation.prev,
            change: crate::store::mutation::Change::from_slot(slot),
            undoes: mutation.undoes,
        },
        answer,
    })
}

/// A write for the key's primary.
pub(crate) fn encode_write(
    cache: &str,
    request: &WriteRequest,
    request_id: Option<&str>,
) -> v1::ForwardWriteRequest {
    let (condition, expected_version) = match request.condition {
        Condition::Always => (v1::WriteCondition::Always, 0),
        Condition::Absent => (v1::WriteCondition::Absent, 0),
        Condition::Present => (v1::WriteCondition::Present, 0),
        Condition::VersionIs(version) => (v1::WriteCondition::VersionIs, version),
    };
    let mut forwarded = v1::ForwardWriteRequest {
        cache: cache.to_string(),
        key: request.key.clone(),
        condition: condition as i32,
        expected_version,
        keep_previous: request.keep_previous,
        request_id: request_id.unwrap_or_default().to_string(),
        ..Default::default()
    };
    match &request.op {
        WriteOp::Remove => forwarded.remove = true,
        WriteOp::Restamp { in_doubt } => forwarded.restamp_in_doubt = *in_doubt,
        WriteOp::Put(new) => {
            forwarded.value = new.value.clone();
            forwarded.lifespan_ms = new.lifespan_ms;
            forwarded.max_idle_ms = new.max_idle_ms;
            forwarded.tags = new.tags.iter().map(|t| t.to_string()).collect();
        }
    }
    forwarded
}

/// A forwarded write as the store's request; keys and values are copied so the store
/// does not keep the message buffer alive.
pub(crate) fn decode_write(request: &v1::ForwardWriteRequest) -> Result<WriteRequest> {
    let condition = match v1::WriteCondition::try_from(request.condition) {
        Ok(v1::WriteCondition::Always) => Condition::Always,
        Ok(v1::WriteCondition::Absent) => Condition::Absent,
        Ok(v1::WriteCondition::Present) => Condition::Present,
        Ok(v1::WriteCondition::VersionIs) => Condition::VersionIs(request.expected_version),
        _ => return Err(Error::InvalidArgument("unknown write condition".into())),
    };
    let op = if request.restamp_in_doubt != 0 {
        WriteOp::Restamp {
            in_doubt: request.restamp_in_doubt,
        }
    } else if request.remove {
        WriteOp::Remove
    } else {
        WriteOp::Put(NewValue {
            value: Bytes::copy_from_slice(&request.value),
            lifespan_ms: request.lifespan_ms,
            max_idle_ms: request.max_idle_ms,
            tags: request.tags.iter().map(|t| Arc::from(t.as_str())).collect(),
        })
    };
    Ok(WriteRequest {
        key: Bytes::copy_from_slice(&request.key),
        op,
        condition,
        keep_previous: request.keep_previous,
    })
}

/// Reads of max-idle entries as sent to other nodes and sites.
pub fn encode_touches(touches: &[Touch]) -> Vec<v1::Touched> {
    touches
        .iter()
        .map(|touch| v1::Touched {
            key: touch.key.clone(),
            version: touch.version,
            last_used_ms: touch.last_used_ms,
        })
        .collect()
}

/// Reads of max-idle entries as received.
pub fn decode_touches(touched: Vec<v1::Touched>) -> Vec<Touch> {
    touched
        .into_iter()
        .map(|touched| Touch {
            key: touched.key,
            version: touched.version,
            last_used_ms: touched.last_used_ms,
        })
        .collect()
}
