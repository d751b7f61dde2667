//! `misbehave`: a test-only filter that breaks on demand, so weir's end-to-end tests can
//! prove the host survives a bad guest.
//!
//! Config: `{ "mode": MODE, "phase": "request" | "response" }`; `phase` defaults to
//! `"request"`, and says which call misbehaves.
//!
//! | mode | what it does |
//! | --- | --- |
//! | `ok` | behaves: `on_request` sets `x-misbehave: ok`, `on_response` passes |
//! | `pass` | does nothing in either call: the floor of a filter call (`bench/configs/weir-noop.toml`) |
//! | `trap` | panics, which traps the instance |
//! | `loop` | spins forever, until weir's CPU deadline stops it |
//! | `alloc` | allocates and touches 1 MiB chunks forever, until weir's memory cap stops it |
//! | `init-error` | `init` fails with `misbehave: init refused` |
//! | `flood` | `on_request` sets 9,000 headers of different names, more than weir keeps on one message |

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

use std::hint::black_box;

use serde::Deserialize;
use weir_filter::{
    Filter, Outcome, Request, RequestAction, RequestEdit, RequestInfo, ResponseAction,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    #[serde(default)]
    phase: Phase,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Ok,
    Pass,
    Trap,
    Loop,
    Alloc,
    InitError,
    Flood,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    #[default]
    Request,
    Response,
}

impl Phase {
    fn call(self) -> &'static str {
        match self {
            Phase::Request => "on-request",
            Phase::Response => "on-response",
        }
    }
}

struct Misbehave {
    mode: Mode,
    phase: Phase,
}

impl Misbehave {
    fn act(&self, phase: Phase) {
        if phase != self.phase {
            return;
        }
        match self.mode {
            Mode::Ok | Mode::Pass | Mode::InitError | Mode::Flood => {}
            Mode::Trap => panic!("misbehave: trapping in {}, as configured", phase.call()),
            Mode::Loop => {
                // black_box keeps the optimiser from proving the loop side-effect free.
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Mode::Alloc => {
                let mut kept: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    // Touch every page so the memory is really used, not just reserved.
                    for i in (0..chunk.len()).step_by(4096) {
                        chunk[i] = 1;
                    }
                    kept.push(black_box(chunk));
                    black_box(&kept);
                }
            }
        }
    }
}

impl Filter for Misbehave {
    type Config = Config;
    const NAME: &'static str = "misbehave";

    fn new(config: Config) -> Result<Self, String> {
        if config.mode == Mode::InitError {
            // The SDK prefixes the name: the host sees "misbehave: init refused".
            return Err("init refused".into());
        }
        Ok(Misbehave {
            mode: config.mode,
            phase: config.phase,
        })
    }

    fn on_request(&mut self, _: &RequestInfo, _: &Request) -> RequestAction {
        self.act(Phase::Request);
        if self.mode == Mode::Pass {
            return RequestAction::proceed();
        }
        let mut edit = RequestEdit::new().set_header("x-misbehave", "ok");
        if self.mode == Mode::Flood {
            for i in 0..9_000 {
                edit = edit.set_header(format!("x-flood-{i}"), "1");
            }
        }
        RequestAction::proceed_with_edit(edit)
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        _: &Request,
        _: Option<Vec<u8>>,
        _: &Outcome,
    ) -> ResponseAction {
        self.act(Phase::Response);
        ResponseAction::proceed()
    }
}

weir_filter::export_filter!(Misbehave);
