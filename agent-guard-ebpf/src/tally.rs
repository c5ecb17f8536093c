//! The verdict of a hook that decides on several objects, kept in map memory.
//!
//! Each [`check`](crate::scope::check) ends in one of many constant answers. Held in
//! registers, every combination of the answers so far is a separate state that the verifier
//! carries into the next check, and it verifies that check's walk callback once for each:
//! `path_rename`, with up to eight walks, took 16 of the 30 seconds a 6.1 guest spent
//! loading all the programs. Written to a per-CPU map slot, whose contents the verifier
//! does not track, the paths merge after each answer and its work grows with the number of
//! checks instead of multiplying.
use agent_guard_common::{ACTION_ALLOW, ACTION_DENY, RULE_UNRESOLVED};

use crate::{
    kernel::current_task,
    maps::TALLY,
    scope::{Checked, Owned},
};

/// The map slot: the verdict so far and the task it belongs to (see [`Owned`]: another
/// task's program that takes the slot mid-hook turns this one's answer into a refusal).
#[repr(C)]
pub struct TallySlot {
    owner: u64,
    verdict: Checked,
}

pub struct Tally {
    slot: *mut TallySlot,
    task: u64,
}

impl Tally {
    /// A tally that allows until something stronger is added; `None` only if the map slot
    /// is missing, which the caller must take as a refusal.
    #[inline(always)]
    pub fn start() -> Option<Self> {
        let slot = TALLY.get_ptr_mut(0)?;
        let task = current_task();
        // SAFETY: the per-CPU slot is this program run's once it is claimed.
        unsafe {
            Owned::claim(&raw mut (*slot).owner, task);
            (*slot).verdict = Checked {
                action: ACTION_ALLOW,
                rule: 0,
            };
        }
        Some(Self { slot, task })
    }

    /// Keeps the stronger of the tally and `checked` (deny over audit over allow; the
    /// earlier one on a tie).
    #[inline(always)]
    pub fn add(&self, checked: Checked) {
        // SAFETY: a pointer into the per-CPU slot. Written after another task took the
        // slot, a stronger answer only makes that task's verdict stricter.
        unsafe {
            if checked.action > (*self.slot).verdict.action {
                (*self.slot).verdict = checked;
            }
        }
    }

    /// A refusal with `rule`.
    #[inline(always)]
    pub fn deny(&self, rule: u32) {
        self.add(Checked {
            action: ACTION_DENY,
            rule,
        });
    }

    /// Whether the tally already refuses (later checks cannot change that).
    #[inline(always)]
    pub fn denied(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.slot).verdict.action == ACTION_DENY }
    }

    /// The verdict; a refusal if another task's program took the slot meanwhile.
    #[inline(always)]
    pub fn get(&self) -> Checked {
        // SAFETY: as above.
        unsafe {
            let verdict = (*self.slot).verdict;
            if Owned::still(&raw const (*self.slot).owner, self.task) {
                verdict
            } else {
                UNTALLIED
            }
        }
    }
}

/// The answer when no tally could be started or its slot changed hands: fail closed.
pub const UNTALLIED: Checked = Checked {
    action: ACTION_DENY,
    rule: RULE_UNRESOLVED,
};
