//! Per-key byte quotas: how much a key's open transfers may hold, and how much
//! it may hold in all, open and completed together, so one key cannot fill the
//! disk with data it never completes, nor with batches it completes.

/// A key's limits, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    /// What its open transfers may hold together.
    pub(crate) open: u64,
    /// What it may hold in all: open transfers plus completed batches.
    pub(crate) total: u64,
}

/// What a key holds now, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// In its open transfers (segment ciphertext).
    pub(crate) open: u64,
    /// In its completed batches (plaintext).
    pub(crate) stored: u64,
}

/// Which quota a segment would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The open-transfer quota.
    Open { held: u64, quota: u64 },
    /// The total quota.
    Total { held: u64, quota: u64 },
}

impl Exceeded {
    /// Text for the refusal.
    pub(crate) fn message(&self) -> String {
        match self {
            Exceeded::Open { held, quota } => format!(
                "this key's open transfers hold {held} bytes of their {quota}-byte quota: \
                 complete or abort one"
            ),
            Exceeded::Total { held, quota } => {
                format!("this key holds {held} bytes of its {quota}-byte quota")
            }
        }
    }
}

/// Whether a key holding `held` may store `more` bytes in an open transfer.
pub(crate) fn admit(held: Held, more: u64, quota: Quota) -> Result<(), Exceeded> {
    let open = held.open.saturating_add(more);
    if open > quota.open {
        return Err(Exceeded::Open {
            held: held.open,
            quota: quota.open,
        });
    }
    let total = open.saturating_add(held.stored);
    if total > quota.total {
        return Err(Exceeded::Total {
            held: held.open.saturating_add(held.stored),
            quota: quota.total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        open: 100,
        total: 150,
    };

    #[test]
    fn open_bytes_are_bounded_on_their_own_and_with_what_is_stored() {
        let held = |open, stored| Held { open, stored };
        assert_eq!(admit(held(0, 0), 100, QUOTA), Ok(()));
        assert_eq!(
            admit(held(60, 0), 41, QUOTA),
            Err(Exceeded::Open {
                held: 60,
                quota: 100
            })
        );
        assert_eq!(admit(held(60, 90), 0, QUOTA), Ok(()));
        assert_eq!(
            admit(held(60, 90), 1, QUOTA),
            Err(Exceeded::Total {
                held: 150,
                quota: 150
            })
        );
        // Near the top of the range nothing wraps.
        assert!(admit(held(u64::MAX, 0), u64::MAX, QUOTA).is_err());
        assert!(admit(held(0, u64::MAX), 1, QUOTA).is_err());
    }
}
