//! The process's own CPU time and resident memory, read from `/proc/self/stat` and
//! `/proc/self/statm`. The clock-tick rate and the page size come from the kernel's auxiliary
//! vector (`/proc/self/auxv`: `AT_CLKTCK`, `AT_PAGESZ`), so nothing is assumed about the
//! platform and no `unsafe` `sysconf` call is needed.

use std::time::Instant;

const AT_PAGESZ: u64 = 6;
const AT_CLKTCK: u64 = 17;

/// Reads CPU and memory figures; keeps the previous CPU reading to turn it into a rate.
#[derive(Debug)]
pub struct ProcSampler {
    clock_ticks_per_second: f64,
    page_size: u64,
    last_cpu: Option<(Instant, u64)>,
}

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// CPU used since the previous reading, in percent of one core (may exceed 100).
    pub cpu_percent: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// CPU time used since the process started, in seconds.
    pub cpu_seconds_total: Option<f64>,
}

fn auxv() -> (Option<u64>, Option<u64>) {
    let Ok(bytes) = std::fs::read("/proc/self/auxv") else {
        return (None, None);
    };
    let word = std::mem::size_of::<usize>();
    let read = |b: &[u8]| -> u64 {
        if word == 8 {
            u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))
        } else {
            u64::from(u32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
        }
    };
    let (mut page, mut tick) = (None, None);
    for pair in bytes.chunks_exact(word * 2) {
        let (key, value) = (read(&pair[..word]), read(&pair[word..]));
        match key {
            AT_PAGESZ => page = Some(value),
            AT_CLKTCK => tick = Some(value),
            _ => {}
        }
    }
    (page, tick)
}

/// utime + stime, in clock ticks: fields 14 and 15 of `/proc/self/stat`, counted after the
/// command name (which may contain spaces and parentheses, hence the last `)`).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident pages: the second field of `/proc/self/statm`.
fn resident_pages() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    statm.split_whitespace().nth(1)?.parse().ok()
}

impl Default for ProcSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcSampler {
    /// A sampler; the first reading has no CPU percentage yet.
    pub fn new() -> Self {
        let (page, tick) = auxv();
        Self {
            clock_ticks_per_second: tick.filter(|t| *t > 0).unwrap_or(100) as f64,
            page_size: page.filter(|p| *p > 0).unwrap_or(4096),
            last_cpu: None,
        }
    }

    /// Reads the figures now.
    pub fn sample(&mut self) -> ProcSample {
        let now = Instant::now();
        let ticks = cpu_ticks();
        let cpu_percent = match (ticks, self.last_cpu) {
            (Some(t), Some((then, before))) => {
                let secs = now.duration_since(then).as_secs_f64();
                (secs > 0.0).then(|| {
                    t.saturating_sub(before) as f64 / self.clock_ticks_per_second / secs * 100.0
                })
            }
            _ => None,
        };
        if let Some(t) = ticks {
            self.last_cpu = Some((now, t));
        }
        ProcSample {
            cpu_percent,
            resident_bytes: resident_pages().map(|p| p * self.page_size),
            cpu_seconds_total: ticks.map(|t| t as f64 / self.clock_ticks_per_second),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut s = ProcSampler::new();
        assert!(s.page_size >= 4096);
        let first = s.sample();
        assert!(first.resident_bytes.unwrap() > 1024 * 1024);
        assert!(first.cpu_percent.is_none());
        // Burn a little CPU so the second reading has something to measure.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let second = s.sample();
        assert!(second.cpu_percent.unwrap() >= 0.0);
    }
}
