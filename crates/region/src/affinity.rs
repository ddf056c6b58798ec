//! Which CPUs the async runtime's threads run on (ADR 0014).
//!
//! A machine whose disk interrupts all go to one CPU (a VM's single-queue virtio disk, say) does
//! the completion of every `fdatasync` there, in interrupt and soft-interrupt context, on top of
//! whichever thread runs on that CPU. On this project's 2-core machine, durable RegisterImage at
//! 64 in flight reached 36 % of the echo with the runtime's thread pinned to the disk's CPU and
//! 47 % with it pinned to the other one (seven interleaved runs each; docs/performance.md,
//! "Session 7"); unpinned, the scheduler moved it between the two, and the result wandered
//! between those figures from run to run.
//!
//! So by default (`--runtime-cpus auto`) the runtime's threads run on the CPUs that serve no
//! interrupt of a block device, when there are such CPUs and enough of them for the worker
//! threads; the node's own threads (writer, commit thread, request recorder, checkpointer) and
//! child processes keep every CPU the process had ([`unpin_this_thread`], which the node's
//! thread spawner calls, and [`child_gets_every_cpu`]): they wait on the disk anyway. A machine
//! whose disk has a queue per CPU (NVMe, multi-queue virtio) spreads its interrupts over all
//! CPUs, and then nothing is pinned.
//!
//! Linux only; elsewhere, and whenever sysfs or procfs cannot be read, nothing is pinned.

use std::collections::BTreeSet;
use std::sync::OnceLock;

/// The `--runtime-cpus` choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCpus {
    /// The CPUs that serve no block device interrupt (nothing pinned when there are none, or
    /// fewer than the runtime's worker threads).
    Auto,
    /// Every CPU the process may use: nothing pinned.
    All,
    /// Exactly these CPUs.
    List(Vec<usize>),
}

impl std::str::FromStr for RuntimeCpus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(RuntimeCpus::Auto),
            "all" => Ok(RuntimeCpus::All),
            list => parse_cpu_list(list)
                .filter(|cpus| !cpus.is_empty())
                .map(|cpus| RuntimeCpus::List(cpus.into_iter().collect()))
                .ok_or_else(|| format!("`{s}` is not auto, all or a CPU list such as 0 or 0-2,4")),
        }
    }
}

/// The decision, for the log line the caller writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The runtime's threads run on these CPUs.
    Pinned {
        cpus: Vec<usize>,
        /// The CPUs that serve the disks' interrupts (`auto`), else empty.
        interrupt_cpus: Vec<usize>,
    },
    /// Nothing pinned, and why.
    Everywhere(String),
}

/// Every CPU the process could use before anything here pinned a thread.
static PROCESS_CPUS: OnceLock<Vec<usize>> = OnceLock::new();
/// The CPUs of the runtime's threads, when pinned.
static RUNTIME_CPUS: OnceLock<Vec<usize>> = OnceLock::new();

/// The decision of [`plan`].
static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Decides where the runtime's `workers` threads run. Call once, before the runtime starts;
/// then call [`pin_runtime_thread`] at the start of each of its threads.
pub fn plan(choice: &RuntimeCpus, workers: usize) -> Placement {
    let placement = decide(choice, workers);
    let _ = PLACEMENT.set(placement.clone());
    placement
}

/// Where the runtime runs, in words (`amisim bench` prints it: it moves the results).
pub fn describe() -> String {
    match PLACEMENT.get() {
        Some(Placement::Pinned {
            cpus,
            interrupt_cpus,
        }) if !interrupt_cpus.is_empty() => format!(
            "on CPU {} (the disk's interrupts are on CPU {}; --runtime-cpus)",
            format_cpu_list(cpus),
            format_cpu_list(interrupt_cpus)
        ),
        Some(Placement::Pinned { cpus, .. }) => {
            format!("on CPU {} (--runtime-cpus)", format_cpu_list(cpus))
        }
        Some(Placement::Everywhere(why)) => format!("on every CPU ({why})"),
        None => "on every CPU".to_string(),
    }
}

fn decide(choice: &RuntimeCpus, workers: usize) -> Placement {
    let Some(allowed) = current_cpus() else {
        return Placement::Everywhere("the CPU affinity cannot be read here".into());
    };
    let _ = PROCESS_CPUS.set(allowed.clone());
    let (cpus, interrupt_cpus) = match choice {
        RuntimeCpus::All => return Placement::Everywhere("--runtime-cpus all".into()),
        RuntimeCpus::List(list) => {
            let cpus: Vec<usize> = list
                .iter()
                .copied()
                .filter(|c| allowed.contains(c))
                .collect();
            if cpus.is_empty() {
                return Placement::Everywhere(format!(
                    "none of the CPUs {} is available to this process",
                    format_cpu_list(list)
                ));
            }
            (cpus, Vec::new())
        }
        RuntimeCpus::Auto => {
            let interrupts = block_device_interrupt_cpus();
            match auto_cpus(&allowed, &interrupts, workers) {
                Ok(cpus) => (cpus, interrupts.into_iter().collect()),
                Err(why) => return Placement::Everywhere(why),
            }
        }
    };
    let _ = RUNTIME_CPUS.set(cpus.clone());
    Placement::Pinned {
        cpus,
        interrupt_cpus,
    }
}

/// `auto`: the allowed CPUs that serve no block device interrupt, if that leaves at least one
/// CPU per worker and pins anything at all.
fn auto_cpus(
    allowed: &[usize],
    interrupts: &BTreeSet<usize>,
    workers: usize,
) -> Result<Vec<usize>, String> {
    if interrupts.is_empty() {
        return Err("no block device interrupt was found".into());
    }
    let free: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !interrupts.contains(c))
        .collect();
    if free.len() == allowed.len() {
        return Err("the disks' interrupts go to CPUs this process does not use".into());
    }
    if free.is_empty() {
        return Err("every CPU serves disk interrupts".into());
    }
    if free.len() < workers {
        return Err(format!(
            "{} CPU(s) serve no disk interrupt, fewer than the {workers} runtime threads",
            free.len()
        ));
    }
    Ok(free)
}

/// Pins the calling thread to the runtime's CPUs, if [`plan`] chose any (the runtime's
/// `on_thread_start`).
pub fn pin_runtime_thread() {
    if let Some(cpus) = RUNTIME_CPUS.get() {
        set_current_cpus(cpus);
    }
}

/// Gives the calling thread back every CPU of the process (the node's own threads: a thread
/// inherits the CPUs of the thread that started it, often a pinned runtime thread).
pub fn unpin_this_thread() {
    if RUNTIME_CPUS.get().is_some() {
        if let Some(all) = PROCESS_CPUS.get() {
            set_current_cpus(all);
        }
    }
}

/// Makes a child started by `command` take back every CPU of the process (it would inherit
/// the pinned CPUs of the runtime thread that starts it); nothing when nothing is pinned.
#[cfg(target_os = "linux")]
pub fn child_gets_every_cpu(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let Some(cpus) = allowed_cpus() else {
        return;
    };
    let set = cpu_set(cpus);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one system call on a set built before the
    // fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn child_gets_every_cpu(_command: &mut std::process::Command) {}

/// Every CPU of the process when the runtime's threads are pinned (what a node thread or a
/// child process gets back); `None` when nothing is pinned.
fn allowed_cpus() -> Option<&'static [usize]> {
    RUNTIME_CPUS.get()?;
    PROCESS_CPUS.get().map(Vec::as_slice)
}

/// Parses a kernel CPU list (`0-3,5`).
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<usize>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b >= 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                let c: usize = part.trim().parse().ok()?;
                if c >= 4096 {
                    return None;
                }
                out.insert(c);
            }
        }
    }
    Some(out)
}

/// Formats CPUs as a kernel CPU list (`0-3,5`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The CPUs that serve the interrupts of the machine's block devices (those backed by a
/// device: not loop, RAM or zram devices).
#[cfg(target_os = "linux")]
fn block_device_interrupt_cpus() -> BTreeSet<usize> {
    interrupt_cpus_under(
        std::path::Path::new("/sys/block"),
        std::path::Path::new("/proc/irq"),
    )
}

#[cfg(not(target_os = "linux"))]
fn block_device_interrupt_cpus() -> BTreeSet<usize> {
    BTreeSet::new()
}

/// [`block_device_interrupt_cpus`] over the given sysfs block directory and procfs irq
/// directory: each device's interrupts are the `msi_irqs` (else the `irq`) of the nearest
/// ancestor of its `device` that has them; an interrupt's CPUs are its
/// `effective_affinity_list` (else its `smp_affinity_list`).
fn interrupt_cpus_under(block: &std::path::Path, proc_irq: &std::path::Path) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    let Ok(devices) = std::fs::read_dir(block) else {
        return cpus;
    };
    for dev in devices.flatten() {
        let Ok(mut at) = std::fs::canonicalize(dev.path().join("device")) else {
            continue;
        };
        let mut irqs: Vec<u32> = Vec::new();
        for _ in 0..8 {
            if let Ok(list) = std::fs::read_dir(at.join("msi_irqs")) {
                irqs.extend(
                    list.flatten()
                        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())),
                );
                break;
            }
            if let Some(irq) = std::fs::read_to_string(at.join("irq"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|&n| n > 0)
            {
                irqs.push(irq);
                break;
            }
            if !at.pop() || at.parent().is_none() {
                break;
            }
        }
        for irq in irqs {
            let dir = proc_irq.join(irq.to_string());
            let list = std::fs::read_to_string(dir.join("effective_affinity_list"))
                .or_else(|_| std::fs::read_to_string(dir.join("smp_affinity_list")));
            if let Some(set) = list.ok().and_then(|s| parse_cpu_list(&s)) {
                cpus.extend(set);
            }
        }
    }
    cpus
}

#[cfg(target_os = "linux")]
fn current_cpus() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity(2) writes at most
    // `size_of::<cpu_set_t>()` bytes into it; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
        Some((0..max).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

#[cfg(not(target_os = "linux"))]
fn current_cpus() -> Option<Vec<usize>> {
    None
}

/// A `cpu_set_t` of `cpus` (those beyond its size are left out).
#[cfg(target_os = "linux")]
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it (c < max).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < max) {
            libc::CPU_SET(c, &mut set);
        }
        set
    }
}

#[cfg(target_os = "linux")]
fn set_current_cpus(cpus: &[usize]) {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        tracing::debug!(cpus = %format_cpu_list(cpus), error = %std::io::Error::last_os_error(),
            "cannot set the thread's CPUs");
    }
}

#[cfg(not(target_os = "linux"))]
fn set_current_cpus(_cpus: &[usize]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_format_like_the_kernel_s() {
        let set = parse_cpu_list("0-2,5,7-8\n").expect("parses");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 5, 7, 8]);
        assert_eq!(format_cpu_list(&[8, 0, 1, 2, 5, 7]), "0-2,5,7-8");
        assert_eq!(format_cpu_list(&[3]), "3");
        assert_eq!(parse_cpu_list("").map(|s| s.len()), Some(0));
        for bad in ["x", "3-1", "1-", "99999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_flag_takes_auto_all_or_a_list_and_explains_anything_else() {
        assert_eq!("auto".parse::<RuntimeCpus>(), Ok(RuntimeCpus::Auto));
        assert_eq!("all".parse::<RuntimeCpus>(), Ok(RuntimeCpus::All));
        assert_eq!(
            "0,2-3".parse::<RuntimeCpus>(),
            Ok(RuntimeCpus::List(vec![0, 2, 3]))
        );
        let err = "fast".parse::<RuntimeCpus>().expect_err("not a choice");
        assert!(err.contains("auto, all or a CPU list"), "{err}");
        assert!("".parse::<RuntimeCpus>().is_err());
    }

    #[test]
    fn auto_keeps_the_runtime_off_the_disk_s_cpus_only_when_that_leaves_enough() {
        let irq = |c: &[usize]| c.iter().copied().collect::<BTreeSet<_>>();
        // This project's 2-core VM: the disk's interrupts on CPU 1, one runtime worker.
        assert_eq!(auto_cpus(&[0, 1], &irq(&[1]), 1), Ok(vec![0]));
        // Two workers would share one CPU: not pinned.
        assert!(auto_cpus(&[0, 1], &irq(&[1]), 2)
            .expect_err("too few")
            .contains("fewer than the 2 runtime threads"));
        // A queue per CPU (NVMe): interrupts everywhere, nothing pinned.
        assert!(auto_cpus(&[0, 1, 2, 3], &irq(&[0, 1, 2, 3]), 3).is_err());
        // No disk interrupt found, or only on CPUs the process does not use.
        assert!(auto_cpus(&[0, 1], &irq(&[]), 1).is_err());
        assert!(auto_cpus(&[0, 1], &irq(&[5]), 1).is_err());
        // Four CPUs, the disk on CPU 3, three workers.
        assert_eq!(auto_cpus(&[0, 1, 2, 3], &irq(&[3]), 3), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn a_disk_s_interrupts_are_found_through_its_device_s_msi_irqs_or_irq() {
        let root = tempfile::tempdir().expect("tempdir");
        let sys = root.path().join("sys");
        let proc_irq = root.path().join("proc/irq");
        let mk = |p: &std::path::Path| std::fs::create_dir_all(p).expect("mkdir");
        let write = |p: std::path::PathBuf, s: &str| std::fs::write(p, s).expect("write");
        // vda: a virtio disk under a PCI function with two MSI interrupts (35: config on CPU
        // 1, 36: requests on CPU 1; smp_affinity_list says both CPUs, the effective one wins).
        let pci = sys.join("devices/pci0000:00/0000:00:02.0");
        mk(&pci.join("virtio1"));
        mk(&pci.join("msi_irqs/35"));
        mk(&pci.join("msi_irqs/36"));
        // sdb: a legacy interrupt (19, on CPU 2), only smp_affinity_list.
        let ata = sys.join("devices/pci0000:00/0000:00:1f.2");
        mk(&ata.join("host0/target0/0:0:0:0"));
        write(ata.join("irq"), "19\n");
        // loop0: no device, no interrupt.
        let block = sys.join("block");
        mk(&block.join("vda"));
        mk(&block.join("sdb"));
        mk(&block.join("loop0"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(pci.join("virtio1"), block.join("vda/device"))
                .expect("link");
            std::os::unix::fs::symlink(ata.join("host0/target0/0:0:0:0"), block.join("sdb/device"))
                .expect("link");
            for (irq, effective, smp) in [(35, Some("1"), "0-1"), (36, Some("1\n"), "0-1")] {
                let dir = proc_irq.join(irq.to_string());
                mk(&dir);
                write(dir.join("smp_affinity_list"), smp);
                if let Some(e) = effective {
                    write(dir.join("effective_affinity_list"), e);
                }
            }
            mk(&proc_irq.join("19"));
            write(proc_irq.join("19/smp_affinity_list"), "2\n");
            let found = interrupt_cpus_under(&block, &proc_irq);
            assert_eq!(found.into_iter().collect::<Vec<_>>(), [1, 2]);
        }
        // Nothing to read: nothing found (and so, with `auto`, nothing pinned).
        assert!(interrupt_cpus_under(&root.path().join("none"), &proc_irq).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_list_pins_runtime_threads_and_node_threads_get_every_cpu_back() {
        // The plan is process-wide (statics), so this test alone sets it, and only on a
        // thread of its own whose CPUs it restores.
        let all = current_cpus().expect("readable");
        let first = all[0];
        let placement = plan(&RuntimeCpus::List(vec![first]), 1);
        assert_eq!(
            placement,
            Placement::Pinned {
                cpus: vec![first],
                interrupt_cpus: vec![]
            }
        );
        let (pinned, unpinned) = std::thread::spawn(move || {
            pin_runtime_thread();
            let pinned = current_cpus().expect("readable");
            unpin_this_thread();
            (pinned, current_cpus().expect("readable"))
        })
        .join()
        .expect("thread");
        assert_eq!(pinned, [first]);
        assert_eq!(unpinned, all);
        assert_eq!(allowed_cpus(), Some(all.as_slice()));
    }
}
