//! The dataflow as built, in words: every operator and every channel between them, the way Kafka
//! Streams' `Topology#describe()` prints a topology. Read from timely's own log of the operators and
//! channels it creates, so it cannot drift from the code; `docs/topology.txt` holds the description of
//! the shipped pipeline file, and a test compares it with what a run builds.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::logging::{TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

/// An operator's port: (operator index in its scope, port).
type Port = (usize, usize);

/// The operators and channels timely reported while capturing.
#[derive(Default)]
struct Seen {
    /// Operator address (scope path + index) → name.
    operators: BTreeMap<Vec<usize>, String>,
    /// (scope address, source (operator, port), target (operator, port)).
    channels: Vec<(Vec<usize>, Port, Port)>,
    /// Capture ended: later events (messages, schedules) are ignored.
    done: bool,
}

/// Records the operators and channels a worker creates from now until [`Capture::finish`].
pub struct Capture {
    seen: Rc<RefCell<Seen>>,
}

impl Capture {
    /// Starts capturing on `worker` (its "timely" log; none is registered otherwise).
    pub fn start(worker: &mut Worker) -> Option<Self> {
        let seen = Rc::new(RefCell::new(Seen::default()));
        let sink = seen.clone();
        worker.log_register()?.insert::<TimelyEventBuilder, _>("timely", move |_, data| {
            let Some(events) = data else { return };
            let Ok(mut seen) = sink.try_borrow_mut() else { return };
            if seen.done {
                return;
            }
            for (_, event) in events.drain(..) {
                match event {
                    TimelyEvent::Operates(op) => {
                        seen.operators.insert(op.addr, op.name);
                    }
                    TimelyEvent::Channels(ch) => seen.channels.push((ch.scope_addr, ch.source, ch.target)),
                    _ => {}
                }
            }
        });
        Some(Capture { seen })
    }

    /// Ends the capture and renders what was built: one line per channel, `from --> to`, operators by
    /// name with their port when they have several, in the order timely created them.
    pub fn finish(self, worker: &mut Worker) -> String {
        if let Some(logger) = worker.logger_for::<TimelyEventBuilder>("timely") {
            logger.flush();
        }
        if let Some(mut registry) = worker.log_register() {
            // Operators keep their handle to the logger; `done` makes the rest of the run cheap.
            registry.remove("timely");
        }
        let mut seen = self.seen.borrow_mut();
        seen.done = true;
        render(&seen)
    }
}

fn render(seen: &Seen) -> String {
    let name = |scope: &[usize], (op, port): Port, outputs: bool| -> String {
        let mut addr = scope.to_vec();
        addr.push(op);
        let base = match (op, seen.operators.get(&addr)) {
            // Index 0 of a scope is the scope's own boundary.
            (0, _) => seen.operators.get(scope).map_or("scope".to_string(), |n| format!("{n} (boundary)")),
            // Operators named alike (`FlatMap`, `Concatenate`) carry their index, stable across builds.
            (_, Some(n))
                if seen.operators.iter().filter(|(a, m)| a[..a.len() - 1] == *scope && *m == n).count() > 1 =>
            {
                format!("{n}#{op}")
            }
            (_, Some(n)) => n.clone(),
            (_, None) => format!("operator {op}"),
        };
        let ports = seen
            .channels
            .iter()
            .filter(|(s, src, dst)| s.as_slice() == scope && if outputs { src.0 == op } else { dst.0 == op });
        let distinct: std::collections::BTreeSet<usize> =
            ports.map(|(_, src, dst)| if outputs { src.1 } else { dst.1 }).collect();
        if distinct.len() > 1 {
            format!("{base}[{port}]")
        } else {
            base
        }
    };
    let mut out = String::new();
    for (scope, source, target) in &seen.channels {
        out.push_str(&format!("{} --> {}\n", name(scope, *source, true), name(scope, *target, false)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::{Inspect, ToStream};

    #[test]
    fn a_built_dataflow_is_described_by_its_channels() {
        let text = timely::execute_directly(|worker| {
            let capture = Capture::start(worker).expect("a log registry");
            worker.dataflow::<u64, _, _>(|scope| {
                (0..3u64).to_stream(scope).container::<Vec<u64>>().inspect(|_| {});
            });
            capture.finish(worker)
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["ToStreamBuilder --> Inspect"], "{text}");
    }
}
