//! The process's memory, as the benchmarks report it.

/// Peak resident memory of this process in MiB: the resident-set high-water mark (`VmHWM` in
/// `/proc/self/status`). `None` where there is no such file (not Linux).
///
/// `getrusage`'s `ru_maxrss` is not used: Linux carries it across `execve`, so a process
/// started by a large parent (a Python benchmark script) reports the parent's peak.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the high-water mark to the current resident set (`5` into `/proc/self/clear_refs`,
/// Linux 4.0 and later): a benchmark that builds its model in a larger form first (an f32
/// model quantized to int8) measures the peak of what follows. Whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touching 64 MiB raises the high-water mark by about that much.
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rises_with_touched_memory() {
        let before = peak_rss_mib().expect("Linux has /proc/self/status");
        let block = vec![1u8; 64 << 20];
        let after = peak_rss_mib().expect("Linux has /proc/self/status");
        assert!(
            std::hint::black_box(&block)
                .iter()
                .step_by(4096)
                .all(|&b| b == 1)
        );
        assert!(after >= before + 60.0, "{before} MiB -> {after} MiB");
        drop(block);
        if reset_peak_rss() {
            let reset = peak_rss_mib().unwrap();
            assert!(
                reset < after - 60.0,
                "{after} MiB -> {reset} MiB after the reset"
            );
        }
    }
}
