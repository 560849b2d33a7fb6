//! The `boomgpu` binary as a user runs it.

mod common;
use common::boomgpu_cmd as boomgpu;

#[test]
fn devices_lists_the_adapter_in_use() {
    let out = boomgpu().arg("devices").output().unwrap();
    let stdout = common::ok(&out);
    assert!(stdout.contains("<- boomgpu uses this"), "{stdout}");
    assert!(stdout.contains("max storage binding"), "{stdout}");
    assert!(stdout.contains("cooperative matrices"), "{stdout}");

    let out = boomgpu().args(["devices", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let adapters = v["adapters"].as_array().unwrap();
    assert!(!adapters.is_empty());
    let sel = v["selected"].as_u64().unwrap() as usize;
    assert_eq!(adapters[sel]["selected"], true);
    assert!(
        adapters[sel]["limits"]["max_storage_buffer_binding_size"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn no_vulkan_driver_gives_an_actionable_error() {
    // Point the Vulkan loader at a driver list that does not exist.
    let out = boomgpu()
        .arg("devices")
        .env("BOOMGPU_BACKEND", "vulkan")
        .env("VK_DRIVER_FILES", "/nonexistent/boomgpu_icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/boomgpu_icd.json")
        .output()
        .unwrap();
    let stderr = common::err(&out);
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
}

#[test]
fn unknown_adapter_and_backend_are_errors() {
    let out = boomgpu()
        .args(["devices", "--adapter", "no-such-gpu-xyz"])
        .output()
        .unwrap();
    let stderr = common::err(&out);
    assert!(
        stderr.contains("no adapter matches 'no-such-gpu-xyz'") && stderr.contains("[0]"),
        "{stderr}"
    );
    let out = boomgpu()
        .args(["devices", "--backend", "glide"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend"));
    // By index works.
    let out = boomgpu()
        .args(["devices", "--adapter", "0"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Without XDG_RUNTIME_DIR the Vulkan drivers' complaint about it does not
/// reach the user: boomgpu points it at a private folder itself.
#[test]
fn no_runtime_dir_complaint_without_xdg_runtime_dir() {
    let out = boomgpu()
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
}
