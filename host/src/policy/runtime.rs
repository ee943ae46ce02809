//! The wasmtime engine rules run on: the pooling allocator, the epoch
//! clock that enforces deadlines, the linker with the host's imports, and
//! the cache of compiled rules.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceType};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{self, LinkedRule};
use super::sandbox::RuleState;

/// How often the epoch advances: the resolution of rule deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A rule module that could not be made ready to run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a WebAssembly component: {reason}")]
    NotAComponent { path: PathBuf, reason: String },
    #[error("{path} does not implement the mailcall:rule world: {reason}")]
    WrongWorld { path: PathBuf, reason: String },
    #[error("cannot set up the rule engine: {0}")]
    Engine(String),
}

/// Sizes of the instance pool, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PoolSizes {
    /// Component instances alive at once (evaluations plus warm pools).
    pub instances: u32,
    /// The largest memory any rule may have, in bytes.
    pub max_memory: usize,
}

/// The engine, its epoch clock and the linker shared by every rule.
pub struct Runtime {
    engine: Engine,
    linker: Linker<RuleState>,
    cache_dir: Option<PathBuf>,
    /// Tells the epoch thread to stop when the runtime goes away.
    stop_ticking: Arc<AtomicBool>,
    /// Instructions are counted (fuel): for the tools only, since fuel
    /// changes the compiled code and slows it.
    metered: bool,
}

impl Runtime {
    pub fn new(
        pool: PoolSizes,
        cache_dir: Option<PathBuf>,
        metered: bool,
    ) -> Result<Runtime, LoadError> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(pool.instances)
            // A Rust rule has a handful of core instances and memories (the
            // module and WASI adapter shims); Python and JavaScript more.
            .total_core_instances(pool.instances * 16)
            .total_memories(pool.instances * 2)
            .total_tables(pool.instances * 4)
            .total_stacks(pool.instances)
            .max_tables_per_module(4)
            .table_elements(100_000)
            .max_memory_size(pool.max_memory)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            .max_unused_warm_slots(pool.instances.min(64));
        // A fresh instance (isolation = "fresh") used to pay for its heap
        // twice: the slot was madvise(DONTNEED)ed on drop, so the next
        // instance page-faulted every page it touched again (~200 faults,
        // ~0.4 ms per evaluation for the JavaScript and Python rules). With
        // the PAGEMAP_SCAN ioctl (Linux 6.7+) the slot is instead reset in
        // place: only the pages the instance wrote are found and copied back
        // from the memory image (or zeroed), so each instance still starts
        // from the component's initial state, and the pages stay mapped.
        // Up to this many bytes a slot stays resident; beyond it, the rest is
        // decommitted as before. Without the ioctl, keeping memory resident
        // means memset-ing the whole range on every drop, which measured
        // slower than madvise, so it is left off there.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pooling
                .pagemap_scan(Enabled::Auto)
                .linear_memory_keep_resident(4 << 20)
                // The function tables of the interpreters likewise.
                .table_keep_resident(1 << 20);
        }

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(metered)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        bindings::add_to_linker(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let stop_ticking = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = stop_ticking.clone();
        std::thread::Builder::new()
            .name("rule-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;

        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            stop_ticking,
            metered,
        })
    }

    pub fn metered(&self) -> bool {
        self.metered
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads from the cache) the component at `path` and links
    /// it against the rule world of the contract version it was built for. Slow for large modules: call it off the
    /// hot path.
    pub fn load(&self, path: &Path) -> Result<(LinkedRule<RuleState>, String), LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        // Binary components only: text (WAT) is for tests to compile.
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotAComponent {
                path: path.to_path_buf(),
                reason: "the file does not start with the WebAssembly magic bytes".into(),
            });
        }
        let digest = hex(&Sha256::digest(&bytes));
        let component =
            self.compile_cached(&bytes, &digest)
                .map_err(|e| LoadError::NotAComponent {
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;

        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let mut linker = self.linker.clone();
        stub_foreign_imports(&mut linker, &component, &self.engine).map_err(wrong_world)?;
        let rule = LinkedRule::new(&linker, &component, &self.engine).map_err(wrong_world)?;
        Ok((rule, digest))
    }

    /// The component for `bytes`, from the cache when a compiled artifact
    /// for the same content and engine settings is there.
    fn compile_cached(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<Component> {
        let Some(cache_dir) = &self.cache_dir else {
            return Component::from_binary(&self.engine, bytes);
        };
        let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let cached = cache_dir.join(format!("{digest}-{:016x}.cwasm", engine_hash.finish()));
        if cached.exists() {
            // SAFETY: the cache folder holds only artifacts this engine
            // wrote (named by content and engine hash); a damaged file is
            // rejected by deserialize's header checks and recompiled.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(
                    file = %cached.display(),
                    "cached rule artifact unusable, recompiling: {error:#}"
                ),
            }
        }
        let artifact = self.engine.precompile_component(bytes)?;
        if let Err(error) = write_atomically(cache_dir, &cached, &artifact) {
            tracing::warn!(dir = %cache_dir.display(), "cannot cache compiled rule: {error}");
        }
        // SAFETY: `artifact` was produced by this engine just now.
        unsafe { Component::deserialize(&self.engine, &artifact) }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticking.store(true, Ordering::Relaxed);
    }
}

/// Packages the host provides: the rule world and the WASI it links.
const PROVIDED_PACKAGES: &[&str] = &[
    "mailcall:rule",
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// Defines every import from another package (`wasi:http`, …) as a
/// function that traps when called, so that a rule built by a toolchain
/// that imports more than it uses still loads, and gets no capability.
///
/// Wasmtime's own `define_unknown_imports_as_traps` would also shadow the
/// semver-compatible WASI the linker has (a guest's `wasi:cli@0.2.6` would
/// trap instead of using the host's 0.2.12), so imports of provided
/// packages are left to the linker, which reports a mismatch clearly.
fn stub_foreign_imports(
    linker: &mut Linker<RuleState>,
    component: &Component,
    engine: &Engine,
) -> wasmtime::Result<()> {
    let component_type = component.component_type();
    let is_provided = |name: &str| {
        let package = name.split('/').next().unwrap_or(name);
        PROVIDED_PACKAGES.contains(&package.split('@').next().unwrap_or(package))
    };
    // Resources of provided interfaces (`wasi:io`'s streams) that foreign
    // interfaces `use`: those are the host's, and must not be stubbed.
    let mut provided_resources = Vec::new();
    for (name, import) in component_type.imports(engine) {
        if is_provided(name) {
            collect_resources(&import.ty, engine, &mut provided_resources);
        }
    }
    for (name, import) in component_type.imports(engine) {
        if !is_provided(name) {
            let stub = Stub {
                engine,
                provided_resources: &provided_resources,
            };
            stub.item(&mut linker.root(), name, &import.ty, name)?;
        }
    }
    Ok(())
}

fn collect_resources(item: &ComponentItem, engine: &Engine, out: &mut Vec<ResourceType>) {
    match item {
        ComponentItem::Resource(resource) => out.push(*resource),
        ComponentItem::ComponentInstance(instance) => {
            for (_, export) in instance.exports(engine) {
                collect_resources(&export.ty, engine, out);
            }
        }
        _ => {}
    }
}

/// Defines trapping stand-ins for one foreign import.
struct Stub<'a> {
    engine: &'a Engine,
    provided_resources: &'a [ResourceType],
}

impl Stub<'_> {
    fn item(
        &self,
        linker: &mut wasmtime::component::LinkerInstance<'_, RuleState>,
        name: &str,
        item: &ComponentItem,
        qualified: &str,
    ) -> wasmtime::Result<()> {
        match item {
            ComponentItem::ComponentFunc(_) => {
                let message = format!("import {qualified} is not available to rules");
                linker.func_new(name, move |_, _, _, _| {
                    Err(wasmtime::Error::msg(message.clone()))
                })
            }
            ComponentItem::ComponentInstance(instance) => {
                let mut inner = linker.instance(name)?;
                for (export, item) in instance.exports(self.engine) {
                    self.item(
                        &mut inner,
                        export,
                        &item.ty,
                        &format!("{qualified}#{export}"),
                    )?;
                }
                Ok(())
            }
            // A resource the host already has is an alias (`use`): leave it.
            ComponentItem::Resource(resource) if self.provided_resources.contains(resource) => {
                Ok(())
            }
            ComponentItem::Resource(_) => {
                linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(()))
            }
            // Types need no definition; modules and components cannot be
            // imported by a rule (instantiation reports them).
            _ => Ok(()),
        }
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default folder for compiled rules: the user's cache folder.
pub fn default_cache_dir() -> PathBuf {
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(cache).join("mailcall");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("mailcall");
    }
    std::env::temp_dir().join("mailcall-cache")
}
