//! Batches to and from the guest: Arrow IPC streams, uncompressed, checked
//! before they are read.

use super::*;

/// Refuses compressed IPC buffers: their declared uncompressed length is
/// the guest's word, and decoding would allocate it up front.
pub(super) fn uncompressed(bytes: &[u8]) -> std::result::Result<(), String> {
    let word = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let (mut len_at, mut len) = (at, word(at));
        if len == Some(0xFFFF_FFFF) {
            len_at = at + 4;
            len = word(len_at);
        }
        let Some(len) = len.map(|l| l as usize) else { break };
        if len == 0 {
            break;
        }
        let start = len_at + 4;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or("a message runs past the end")?;
        let message = datafusion::arrow::ipc::root_as_message(&bytes[start..end]).map_err(|e| e.to_string())?;
        if message
            .header_as_record_batch()
            .is_some_and(|b| b.compression().is_some())
        {
            return Err("compressed buffers are not accepted".into());
        }
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a negative body length")?;
        at = end.checked_add(body).ok_or("a body length out of range")?;
    }
    Ok(())
}

pub(super) fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn ipc_schema(schema: &Schema) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema).map_err(|e| Error::Internal(e.to_string()))?;
    writer.finish().map_err(|e| Error::Internal(e.to_string()))?;
    writer.into_inner().map_err(|e| Error::Internal(e.to_string()))
}

pub(super) fn ipc_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(
        Vec::with_capacity(batch.get_array_memory_size() + 1024),
        &batch.schema(),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    writer.write(batch).map_err(|e| Error::Internal(e.to_string()))?;
    writer.finish().map_err(|e| Error::Internal(e.to_string()))?;
    writer.into_inner().map_err(|e| Error::Internal(e.to_string()))
}
