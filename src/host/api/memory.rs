//! Memory primitives: vram(), ram(), vram_budget(), reset_peak_rss().

use super::Shared;
use crate::host::errors::{script_err, ScriptResult};
use crate::runtime::memstat;
use crate::runtime::size::parse_size;
use rhai::{Dynamic, Engine, Map};

fn int(v: u64) -> Dynamic {
    Dynamic::from(v as i64)
}

/// The ledger as a script map (`kind: "vram"` makes it print as a table).
pub fn vram_report(rt: &crate::runtime::Runtime) -> Map {
    let l = rt.ledger();
    let models: rhai::Array = rt
        .models()
        .map(|m| {
            let e = l.get(m.id).cloned().unwrap_or_default();
            let mut mm = Map::new();
            mm.insert("name".into(), m.name.clone().into());
            mm.insert(
                "state".into(),
                if !e.on_device {
                    "host"
                } else if e.offloaded > 0 {
                    "partial"
                } else {
                    "full"
                }
                .into(),
            );
            mm.insert("resident".into(), int(e.resident()));
            mm.insert("offloaded".into(), int(e.offloaded));
            mm.insert("host".into(), int(e.host));
            mm.insert("bytes".into(), int(e.total()));
            mm.insert("arch".into(), m.info.arch.into());
            mm.insert("blocks".into(), int(m.info.blocks as u64));
            mm.insert(
                "resident_blocks".into(),
                int(m.weights.resident_blocks() as u64),
            );
            mm.insert("lora_bytes".into(), int(e.lora));
            mm.insert("loras".into(), Dynamic::from_array(lora_list(m)));
            Dynamic::from_map(mm)
        })
        .collect();
    let mut v = Map::new();
    v.insert("kind".into(), "vram".into());
    v.insert(
        "device".into(),
        crate::runtime::device::label(&rt.device).into(),
    );
    v.insert("budget".into(), int(l.budget()));
    v.insert("used".into(), int(l.used()));
    v.insert("free".into(), int(l.free()));
    v.insert("offloaded".into(), int(l.offloaded()));
    v.insert("pinned".into(), int(l.pinned()));
    if let Some((drv, check)) = rt.driver_check() {
        v.insert("driver_free".into(), int(drv.free));
        v.insert("driver_total".into(), int(drv.total));
        v.insert("driver_held".into(), int(check.driver_held));
        v.insert("gap".into(), Dynamic::from(check.gap));
        v.insert("leak".into(), check.leak.into());
    }
    v.insert("models".into(), Dynamic::from_array(models));
    v
}

/// The model's LoRAs in the order applied: name, path and strength.
fn lora_list(m: &crate::runtime::registry::LoadedModel) -> rhai::Array {
    let Ok(dit) = m.dit() else {
        return rhai::Array::new();
    };
    dit.loras()
        .iter()
        .map(|(l, s)| {
            let mut lm = Map::new();
            lm.insert("name".into(), l.name().into());
            lm.insert("path".into(), l.path.display().to_string().into());
            lm.insert("strength".into(), Dynamic::from(*s as rhai::FLOAT));
            Dynamic::from_map(lm)
        })
        .collect()
}

pub fn ram_report(rt: &crate::runtime::Runtime) -> Map {
    let mut v = Map::new();
    v.insert("kind".into(), "ram".into());
    v.insert("rss".into(), int(memstat::rss()));
    v.insert("peak_rss".into(), int(memstat::peak_rss()));
    v.insert(
        "host".into(),
        int(rt.ledger().host() + rt.ledger().pinned()),
    );
    v.insert("pinned".into(), int(rt.ledger().pinned()));
    v
}

pub fn register(engine: &mut Engine, rt: &Shared) {
    let r = rt.clone();
    engine.register_fn("vram", move || vram_report(&r.borrow()));
    let r = rt.clone();
    engine.register_fn("ram", move || ram_report(&r.borrow()));
    let r = rt.clone();
    engine.register_fn(
        "vram_budget",
        move |ctx: rhai::NativeCallContext, size: Dynamic| -> ScriptResult<()> {
            let bytes = if let Ok(i) = size.as_int() {
                if i < 0 {
                    return Err(script_err(format!("vram_budget: negative size {i}")));
                }
                i as u64
            } else if let Ok(s) = size.clone().into_string() {
                parse_size(&s).map_err(|e| script_err(format!("vram_budget: {e}")))?
            } else {
                return Err(script_err(format!(
                    "vram_budget: expected a size like \"24GiB\" or a byte count, got {}",
                    size.type_name()
                )));
            };
            let at = crate::host::errors::call_site(&ctx);
            r.borrow_mut().set_budget_at(bytes, &at);
            Ok(())
        },
    );
    engine.register_fn("reset_peak_rss", || -> bool { memstat::reset_peak() });
    let r = rt.clone();
    engine.register_fn("offload_peak", move || -> i64 {
        r.borrow().offload_peak() as i64
    });
    let r = rt.clone();
    engine.register_fn("reset_offload_peak", move || {
        r.borrow_mut().reset_offload_peak()
    });
    let r = rt.clone();
    engine.register_fn("last_sample", move || -> Map {
        let s = r.borrow().last_sample.clone();
        let mut m = Map::new();
        m.insert("steps".into(), int(s.steps_run as u64));
        m.insert("model_calls".into(), int(s.model_calls as u64));
        m.insert("streamed".into(), int(s.streamed_bytes));
        m.insert("seconds".into(), Dynamic::from(s.seconds));
        m
    });
    // Report maps print as tables; `print` and string interpolation both land here.
    for name in ["print", "to_string"] {
        engine.register_fn(name, |m: &mut Map| {
            crate::host::tables::display(&Dynamic::from_map(m.clone()))
        });
    }
    engine.register_fn("mib", |bytes: i64| -> i64 {
        (bytes as f64 / (1u64 << 20) as f64).round() as i64
    });
}
