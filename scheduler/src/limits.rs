//! What the scheduler keeps of what the network sends it, bounded.
//!
//! Everything a worker reports ends up in the ledger, replicated to every node and written into
//! every snapshot; one worker with a bug (or a hostile one) must not be able to grow it without
//! bound. Labels and error texts are cut; a result too large to store is not cut — half a JSON
//! document is worse than none — but refused, and the task fails with the reason.

use kiln_proto::v1;

/// Most slots a worker may claim: more than any machine renders at once, few enough that a
/// worker cannot claim the whole queue through its slot count.
pub const MAX_SLOTS: u32 = 1024;
/// Longest hostname, version or release reason kept (the rest is cut).
pub const MAX_LABEL: usize = 255;
/// Longest error text kept from a failed attempt (the rest is cut).
pub const MAX_ERROR: usize = 4096;
/// Largest `metadata_json` of a result (BPM, key, loudness and friends take a few hundred bytes).
pub const MAX_METADATA: usize = 64 * 1024;
/// Most output files of one task.
pub const MAX_OUTPUTS: usize = 64;
/// Longest URI, checksum or content type of an output, or manifest URI.
pub const MAX_URI: usize = 2048;

/// `text` cut to at most `max` bytes, at a character boundary, marked as cut.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        const MARK: &str = "…";
        let keep = max.saturating_sub(MARK.len());
        let end = (0..=keep).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.truncate(end);
        text.push_str(MARK);
    }
    text
}

/// Why a worker's result is too large to store, if it is.
pub fn oversized(result: &v1::TaskResult) -> Option<String> {
    if result.metadata_json.len() > MAX_METADATA {
        return Some(format!("metadata of {} bytes (the limit is {MAX_METADATA})", result.metadata_json.len()));
    }
    if result.outputs.len() > MAX_OUTPUTS {
        return Some(format!("{} output files (the limit is {MAX_OUTPUTS})", result.outputs.len()));
    }
    let longest = result
        .outputs
        .iter()
        .flat_map(|o| [o.uri.len(), o.sha256.len(), o.content_type.len()])
        .chain([result.manifest_uri.len()])
        .max()
        .unwrap_or(0);
    (longest > MAX_URI).then(|| format!("an output field of {longest} bytes (the limit is {MAX_URI})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_at_a_character_boundary_and_say_so() {
        assert_eq!(cut("short".into(), 10), "short");
        let long = cut("é".repeat(100), 11);
        assert!(long.len() <= 11 && long.ends_with('…'), "{long}");
        assert!(long.starts_with("éééé"));
    }

    #[test]
    fn a_result_too_large_to_store_is_named() {
        let mut r = v1::TaskResult { metadata_json: "{}".into(), ..Default::default() };
        assert_eq!(oversized(&r), None);
        r.metadata_json = "x".repeat(MAX_METADATA + 1);
        assert!(oversized(&r).is_some_and(|w| w.contains("metadata")));
        r.metadata_json = "{}".into();
        r.outputs = vec![v1::OutputFile::default(); MAX_OUTPUTS + 1];
        assert!(oversized(&r).is_some_and(|w| w.contains("output files")));
        r.outputs = vec![v1::OutputFile { uri: "s3://b/".to_owned() + &"k".repeat(MAX_URI), ..Default::default() }];
        assert!(oversized(&r).is_some_and(|w| w.contains("output field")));
    }
}
