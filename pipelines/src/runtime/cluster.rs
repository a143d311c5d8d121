//! Timely's communication: one thread, threads of one process, or processes on hosts.

use anyhow::{bail, Context, Result};

use super::RunOptions;

pub(super) fn communication(options: &RunOptions) -> Result<timely::CommunicationConfig> {
    if options.workers == 0 || options.processes == 0 {
        bail!("--workers and --processes must be at least 1");
    }
    if options.process >= options.processes {
        bail!("--process must be below --processes ({})", options.processes);
    }
    Ok(if options.processes == 1 {
        if options.workers == 1 {
            timely::CommunicationConfig::Thread
        } else {
            timely::CommunicationConfig::Process(options.workers)
        }
    } else {
        let addresses = match &options.hostfile {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let hosts: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if hosts.len() != options.processes {
                    bail!("{} lists {} hosts for {} processes", path.display(), hosts.len(), options.processes);
                }
                hosts
            }
            None => (0..options.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
        };
        timely::CommunicationConfig::Cluster {
            threads: options.workers,
            process: options.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    })
}
