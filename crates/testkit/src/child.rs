//! A child process killed on drop.

use std::{
    ops::{Deref, DerefMut},
    process::Child,
};

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// Owns a child process and kills it (SIGKILL) and reaps it when dropped, if
/// it is still running.
///
/// It dereferences to the [`Child`], so `guard.try_wait()`,
/// `guard.stderr.take()` and `Pid::from_child(&guard)` work as on the child.
/// A child started in a process group of its own (a browser, which starts
/// helpers) is guarded with [`ChildGuard::group`]: the whole group is killed.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    group: bool,
}

impl ChildGuard {
    /// Guards `child`: only the child itself is killed.
    pub fn new(child: Child) -> Self {
        Self {
            child,
            group: false,
        }
    }

    /// Guards `child`, the leader of a process group of its own (spawned with
    /// `process_group(0)`): the whole group is killed.
    pub fn group(child: Child) -> Self {
        Self { child, group: true }
    }

    /// Kills the child (its group, for a group) if it is still running, and
    /// reaps it. Does nothing for a child that has already exited.
    pub fn kill_and_reap(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = Pid::from_child(&self.child);
            let _ = if self.group {
                kill_process_group(pid, Signal::KILL)
            } else {
                kill_process(pid, Signal::KILL)
            };
            let _ = self.child.wait();
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn drop_kills_a_running_child() {
        let guard = ChildGuard::new(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = Pid::from_child(&guard);
        drop(guard);
        // Reaped: the PID no longer names our child (signal 0 tests existence).
        assert!(rustix::process::test_kill_process(pid).is_err());
    }
}
