//! A completion repeated after its batch was stored: a sender whose receipt was
//! lost completes again, and gets the stored receipt if, and only if, the repeat
//! claims exactly what was stored.

use crate::crypto;
use crate::store::BatchRecord;
use crate::wire::{Complete, TAG_LEN};

/// Whether a completion's sealed metadata (plaintext and tag) is within the
/// server's limit of `max` plaintext bytes; the error is its plaintext length.
pub(crate) fn check_metadata_size(sealed_len: usize, max: u32) -> Result<(), usize> {
    if sealed_len > max as usize + TAG_LEN {
        return Err(sealed_len.saturating_sub(TAG_LEN));
    }
    Ok(())
}

/// Whether `claim` repeats the completion that stored `batch`: the same secret
/// completion id (`completion_id`, which only the transfer's sender learned), and
/// the same segment count, size, chain hash and sealed metadata. Anything else is
/// another batch under a taken id, never an answer with the stored receipt.
pub(crate) fn repeats(batch: &BatchRecord, completion_id: &[u8; 32], claim: &Complete) -> bool {
    crypto::secrets_equal(completion_id, &claim.completion_id)
        && claim.transfer_id == batch.transfer
        && claim.segment_count == batch.segment_count
        && claim.size == batch.size
        && claim.chain.matches(&batch.chain)
        && claim.sealed_metadata[..] == batch.sealed_metadata[..]
        && claim.content_digest == batch.content_digest
}

/// Whether a stored `batch` holds the content a sender would send again: the
/// same plaintext size and the same declared SHA-256. A batch stored without a
/// declared digest (all zeros) confirms nothing, so it is never taken for
/// another's content.
pub(crate) fn confirms(batch: &BatchRecord, size: u64, content_digest: &[u8; 32]) -> bool {
    batch.content_digest != [0; 32] && batch.content_digest == *content_digest && batch.size == size
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::{ChainHash, Signature, TransferId};

    fn stored() -> BatchRecord {
        BatchRecord {
            batch_id: b"b".to_vec(),
            transfer: TransferId([1; 16]),
            sender: [2; 32],
            chunk_size: 4096,
            segment_count: 3,
            size: 9000,
            sealed_metadata: vec![7; 20],
            chain: ChainHash([3; 64]),
            completed_unix: 5,
            content_digest: [6; 32],
            receipt: vec![],
            compression: crate::wire::Compression::None,
        }
    }

    fn claim() -> Complete {
        Complete {
            transfer_id: TransferId([1; 16]),
            segment_count: 3,
            size: 9000,
            completion_id: [4; 32],
            chain: ChainHash([3; 64]),
            sealed_metadata: Bytes::from(vec![7; 20]),
            content_digest: [6; 32],
            replace: false,
            signature: Signature([0; 64]),
        }
    }

    #[test]
    fn metadata_is_measured_without_its_tag() {
        assert_eq!(check_metadata_size(100 + TAG_LEN, 100), Ok(()));
        assert_eq!(check_metadata_size(101 + TAG_LEN, 100), Err(101));
        assert_eq!(check_metadata_size(0, 0), Ok(()));
    }

    #[test]
    fn only_the_same_claim_with_the_secret_repeats() {
        assert!(repeats(&stored(), &[4; 32], &claim()));
        assert!(!repeats(&stored(), &[5; 32], &claim()), "wrong secret");
        let changes: [fn(&mut Complete); 6] = [
            |c| c.content_digest[0] ^= 1,
            |c| c.transfer_id = TransferId([9; 16]),
            |c| c.segment_count += 1,
            |c| c.size -= 1,
            |c| c.chain.0[0] ^= 1,
            |c| c.sealed_metadata = Bytes::from_static(b"other"),
        ];
        for change in changes {
            let mut other = claim();
            change(&mut other);
            assert!(!repeats(&stored(), &[4; 32], &other), "{other:?}");
        }
    }

    #[test]
    fn only_the_same_declared_content_confirms() {
        let batch = stored();
        assert!(confirms(&batch, 9000, &[6; 32]));
        assert!(!confirms(&batch, 9001, &[6; 32]), "another size");
        assert!(!confirms(&batch, 9000, &[7; 32]), "another digest");
        let undeclared = BatchRecord {
            content_digest: [0; 32],
            ..stored()
        };
        assert!(
            !confirms(&undeclared, 9000, &[0; 32]),
            "no declared digest confirms nothing"
        );
    }
}
