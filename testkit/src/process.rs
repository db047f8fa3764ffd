//! Child processes of a test: killed and reaped when the test ends however it ends, and
//! signalled the way faults happen (`KILL`, `STOP` to freeze, `CONT` to thaw, `TERM`).

use std::process::{Child, Command};

/// A child process killed (and reaped) on drop.
pub struct Killed(Option<Child>);

impl Killed {
    pub fn new(child: Child) -> Killed {
        Killed(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a child until into_inner")
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child out of its guard, for an owner that kills it itself.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("a child until into_inner")
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `kill -SIG` a child process (`TERM`, `KILL`, `STOP`, `CONT`).
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}
