//! The standard filters compiled into the weir binary, so `filters = ["headers"]` works
//! without a `wasm` path. `host/build.rs` builds them from `filters/`.

/// A filter component shipped inside weir.
pub struct Builtin {
    /// The name routes use.
    pub name: &'static str,
    /// The component's bytes.
    pub wasm: &'static [u8],
}

static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "headers",
        wasm: include_bytes!(env!("WEIR_BUILTIN_HEADERS")),
    },
    Builtin {
        name: "retry",
        wasm: include_bytes!(env!("WEIR_BUILTIN_RETRY")),
    },
    Builtin {
        name: "breaker",
        wasm: include_bytes!(env!("WEIR_BUILTIN_BREAKER")),
    },
    Builtin {
        name: "limiter",
        wasm: include_bytes!(env!("WEIR_BUILTIN_LIMITER")),
    },
    Builtin {
        name: "cache",
        wasm: include_bytes!(env!("WEIR_BUILTIN_CACHE")),
    },
    Builtin {
        name: "idempotency",
        wasm: include_bytes!(env!("WEIR_BUILTIN_IDEMPOTENCY")),
    },
    Builtin {
        name: "sanitize",
        wasm: include_bytes!(env!("WEIR_BUILTIN_SANITIZE")),
    },
    Builtin {
        name: "auth",
        wasm: include_bytes!(env!("WEIR_BUILTIN_AUTH")),
    },
];

/// The built-in filter called `name`.
pub fn lookup(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The names of all built-in filters.
pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}
