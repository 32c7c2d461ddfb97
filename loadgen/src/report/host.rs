//! Readings of the host the run shares: this process's and the server's CPU seconds, the
//! server's resident memory and the load average, from `/proc`, so a report says how busy the machine was while it measured.

/// CPU seconds (user + system) this process used so far; 0 where `/proc` is missing.
pub fn process_cpu_s() -> f64 {
    cpu_s_from("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds (user + system, all threads) process `pid` used so far; `None` where `/proc`
/// is missing or the process is gone.
pub fn pid_cpu_s(pid: u32) -> Option<f64> {
    cpu_s_from(&format!("/proc/{pid}/stat"))
}

fn cpu_s_from(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Resident memory of process `pid` (`VmRSS`), MiB; `None` where `/proc` is missing or the
/// process is gone.
pub fn pid_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The host's 1-minute load average; 0 where `/proc` is missing.
pub fn load_average_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
