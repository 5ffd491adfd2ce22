//! Process B of the two-process tier tests. A test binary that is its own child: run with
//! `REDIS_MEMO_CHILD` set, it plays process B, which prints `ready` once its cache answers,
//! then answers one line per command read on stdin (`get <id>` prints `<value> <tier>`, where
//! the tier is `local`, `redis` or `computed`; `ping` prints `ok` or `error`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Process B, driven from the test.
pub struct ProcessB {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ProcessB {
    /// Starts this binary again as process B, with `env` set, and waits for it to be ready.
    pub fn start(env: &[(&str, String)]) -> ProcessB {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.env("REDIS_MEMO_CHILD", "b");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-execute the test binary as a child");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut b = ProcessB {
            child,
            stdin,
            stdout,
        };
        assert_eq!(b.read_line(), "ready");
        b
    }

    pub fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.read_line()
    }

    /// Sends `command` without waiting for its answer.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "process B ended");
        line.trim_end().to_owned()
    }

    /// `get <id>` until its copy answers with `value`: a miss stores the entry, a read keeps
    /// its copy (or the next one, when the fill's own drop of older copies lands after the
    /// first).
    pub fn holds(&mut self, id: u64, value: &str) {
        let mut answers = Vec::new();
        while answers.len() < 5 {
            answers.push(self.ask(&format!("get {id}")));
            if answers
                .last()
                .is_some_and(|answer| answer.ends_with(" local"))
            {
                break;
            }
        }
        assert!(
            answers
                .iter()
                .all(|answer| answer.starts_with(&format!("{value} "))),
            "{answers:?}"
        );
        assert_eq!(
            answers.last(),
            Some(&format!("{value} local")),
            "{answers:?}"
        );
    }

    /// A round trip that may meet a connection being replaced or a cluster's slot map being
    /// learned (learning is spaced 100 ms apart): then a later one completes.
    pub fn round_trip(&mut self) {
        for _ in 0..50 {
            if self.ask("ping") == "ok" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("process B never reached Redis again");
    }
}

impl Drop for ProcessB {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
