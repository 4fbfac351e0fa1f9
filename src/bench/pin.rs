//! CPU pinning for benchmarks: every thread of a process onto one CPU.
//!
//! Owns: `--pin` of the replication bench.
//! Must never: be used by the agent itself.

use anyhow::{Context, Result};

/// Pin every current thread of process `pid` (`None`: this process) to
/// `cpu`. Threads started later inherit the CPU of the thread that starts
/// them, so a process pinned once stays pinned.
#[cfg(target_os = "linux")]
pub fn pin_process(pid: Option<u32>, cpu: usize) -> Result<()> {
    use rustix::thread::{CpuSet, sched_setaffinity};
    let tasks = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_string(),
    };
    let mut set = CpuSet::new();
    set.set(cpu);
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
        let tid = entry?
            .file_name()
            .to_string_lossy()
            .parse::<i32>()
            .with_context(|| format!("a thread id in {tasks}"))?;
        let Some(tid) = rustix::process::Pid::from_raw(tid) else {
            continue;
        };
        // A thread may end between the listing and the call.
        match sched_setaffinity(Some(tid), &set) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("pinning thread {tid:?} to CPU {cpu} (--pin needs CPUs 0 and 1)")
                });
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn pin_process(_pid: Option<u32>, _cpu: usize) -> Result<()> {
    anyhow::bail!("--pin is supported on Linux only")
}
