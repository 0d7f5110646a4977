//! SIGTERM to processes and process groups, through the `kill` command: unsafe code (and so
//! a direct `kill(2)` call) is forbidden in this workspace.

/// Who receives the signal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// One process.
    Process(u32),
    /// Every process of the group led by this process.
    Group(u32),
}

/// Sends SIGTERM to `target`; a process that is already gone is not an error.
pub(crate) fn terminate(target: Target) {
    let id = match target {
        Target::Process(pid) => pid.to_string(),
        Target::Group(pid) => format!("-{pid}"),
    };
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", "--", &id])
        .stderr(std::process::Stdio::null())
        .status();
}
