//! XGBoost models saved with `save_model("model.json")` (or `.ubj`), read into a
//! [`TreeEnsemble`] over the bundle's model inputs.
//!
//! What is read: the objective, `learner_model_param.base_score` (a plain number string in
//! XGBoost 1.x/2.x, a bracketed vector such as `"[5E-1]"` in 3.x; always on the prediction
//! scale), the feature names, and each tree's flat arrays (`split_indices`,
//! `split_conditions`, `left_children`, `right_children`, `default_left`; a leaf's value is its
//! `split_conditions` entry). `gbtree` and `dart` boosters are read (dart's tree weights are
//! folded into the leaves); `best_iteration` limits the trees as `XGBRegressor.predict` does.
//! What is refused, with the reason: other objectives, categorical splits, multi-output and
//! vector-leaf models, `gblinear`.

use serde::Deserialize;
use serde_json::Value;

use super::manifest::FeatureNames;
use crate::model::tree::{Objective, TreeArrays, TreeEnsemble};

/// An XGBoost model, as far as scoring needs it.
#[derive(Debug)]
pub struct XgbImport {
    /// The trees, over the bundle's model inputs.
    pub trees: TreeEnsemble,
    /// Model features that no split reads and that map to no model input (ignored).
    pub ignored: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    #[serde(default)]
    feature_names: Vec<String>,
    #[serde(default)]
    feature_types: Vec<String>,
    gradient_booster: Value,
    learner_model_param: Value,
    objective: Value,
    #[serde(default)]
    attributes: Value,
}

#[derive(Deserialize)]
struct Tree {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<f64>,
    default_left: Vec<Value>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    categories_nodes: Vec<i64>,
    #[serde(default)]
    tree_param: Value,
}

/// Reads a parsed XGBoost model (JSON or UBJSON, as a JSON value).
pub fn read(
    doc: Value,
    names: &FeatureNames<'_>,
    use_best_iteration: bool,
) -> Result<XgbImport, String> {
    let file: File = serde_json::from_value(doc)
        .map_err(|e| format!("not an XGBoost model saved with save_model (JSON): {e}"))?;
    let mut l = file.learner;

    let objective_name = l
        .objective
        .get("name")
        .and_then(Value::as_str)
        .ok_or("learner.objective.name is missing")?;
    let objective = Objective::parse(objective_name).ok_or_else(|| {
        format!(
            "unsupported objective {objective_name:?}: manymodel imports regressors trained with {}",
            Objective::ALL
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;

    let param = |key: &str| -> Option<String> {
        match l.learner_model_param.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    for key in ["num_class", "num_target"] {
        if let Some(v) = param(key) {
            let n: f64 = v.trim().parse().unwrap_or(0.0);
            if n > 1.0 || (key == "num_class" && n > 0.0) {
                return Err(format!(
                    "{key} = {v}: multi-output models are not supported; train one regressor per target"
                ));
            }
        }
    }
    let base_score =
        parse_base_score(&param("base_score").ok_or("learner_model_param.base_score is missing")?)?;
    let num_feature: usize = param("num_feature")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(l.feature_names.len());

    if l.feature_types.iter().any(|t| t == "c") {
        return Err("the model has categorical features: categorical splits are not supported; train on one-hot encoded columns (enable_categorical=False)".into());
    }

    // Taken out of the document rather than cloned: a model file can be megabytes of trees.
    let mut gb = std::mem::take(&mut l.gradient_booster);
    let booster = gb
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let (mut model, weights) = match booster.as_str() {
        "gbtree" => (gb["model"].take(), None),
        "dart" => (
            gb["gbtree"]["model"].take(),
            Some(
                serde_json::from_value::<Vec<f64>>(gb["weight_drop"].take())
                    .map_err(|e| format!("dart weight_drop: {e}"))?,
            ),
        ),
        "gblinear" => return Err("gblinear boosters are not supported: export the weights as a linear JSON model ({\"intercept\": b, \"coefficients\": {\"feature\": w}})".into()),
        other => return Err(format!("unknown booster {other:?}: expected gbtree or dart")),
    };
    let trees: Vec<Tree> = serde_json::from_value(model["trees"].take())
        .map_err(|e| format!("gradient_booster trees: {e}"))?;
    let tree_info: Vec<i64> =
        serde_json::from_value(model["tree_info"].clone()).unwrap_or_default();
    if tree_info.iter().any(|&g| g != 0) {
        return Err(
            "the trees belong to several output groups: multi-output models are not supported"
                .into(),
        );
    }
    let parallel: usize = model["gbtree_model_param"]["num_parallel_tree"]
        .as_str()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| {
            model["gbtree_model_param"]["num_parallel_tree"]
                .as_u64()
                .map(|n| n as usize)
        })
        .unwrap_or(1)
        .max(1);

    let mut used = trees.len();
    if use_best_iteration {
        let best = match &l.attributes["best_iteration"] {
            Value::String(s) => s.trim().parse::<usize>().ok(),
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            _ => None,
        };
        if let Some(best) = best {
            used = used.min((best + 1) * parallel);
        }
    }

    // Model feature index → model input index, resolved for the features the splits read.
    let feature_name = |j: usize| -> String {
        l.feature_names
            .get(j)
            .cloned()
            .unwrap_or_else(|| format!("f{j}"))
    };
    let mut input_of: Vec<Option<usize>> = vec![None; num_feature.max(l.feature_names.len())];

    let mut a = TreeArrays {
        objective,
        base_score,
        roots: Vec::with_capacity(used),
        split_feature: Vec::new(),
        threshold: Vec::new(),
        left_child: Vec::new(),
        right_child: Vec::new(),
        default_left: Vec::new(),
        leaf_value: Vec::new(),
    };
    for (t, tree) in trees.iter().take(used).enumerate() {
        let n = tree.left_children.len();
        if [
            tree.right_children.len(),
            tree.split_indices.len(),
            tree.split_conditions.len(),
            tree.default_left.len(),
        ]
        .iter()
        .any(|&len| len != n)
            || n == 0
        {
            return Err(format!("tree {t}: its node arrays differ in length"));
        }
        if tree.split_type.iter().any(|&s| s != 0) || !tree.categories_nodes.is_empty() {
            return Err(format!(
                "tree {t} has categorical splits, which are not supported: train on one-hot encoded columns (enable_categorical=False)"
            ));
        }
        let leaf_vector = tree.tree_param["size_leaf_vector"]
            .as_str()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1);
        if leaf_vector > 1 {
            return Err(format!(
                "tree {t} has vector leaves (multi-target): not supported"
            ));
        }
        let weight = match &weights {
            Some(w) => *w
                .get(t)
                .ok_or_else(|| format!("dart weight_drop has no weight for tree {t}"))?,
            None => 1.0,
        };
        let base = a.split_feature.len();
        let global = |i: i64, what: &str| -> Result<i32, String> {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < n)
                .map(|i| (base + i) as i32)
                .ok_or_else(|| format!("tree {t}: {what} {i} is not a node of the tree"))
        };
        a.roots.push(base as i32);
        for k in 0..n {
            if tree.left_children[k] < 0 {
                let v = tree.split_conditions[k] as f32;
                a.split_feature.push(-1);
                a.threshold.push(0.0);
                a.left_child.push(-1);
                a.right_child.push(-1);
                a.default_left.push(false);
                a.leaf_value.push(f64::from(v) * weight);
                continue;
            }
            let j = usize::try_from(tree.split_indices[k])
                .ok()
                .filter(|&j| j < input_of.len())
                .ok_or_else(|| {
                    format!(
                        "tree {t} splits on feature {}, the model has {}",
                        tree.split_indices[k],
                        input_of.len()
                    )
                })?;
            let input = match input_of[j] {
                Some(i) => i,
                None => {
                    let i = names
                        .resolve(&feature_name(j))
                        .map_err(|e| format!("the model splits on {e}"))?;
                    input_of[j] = Some(i);
                    i
                }
            };
            a.split_feature.push(input as i32);
            a.threshold.push(tree.split_conditions[k] as f32);
            a.left_child
                .push(global(tree.left_children[k], "left child")?);
            a.right_child
                .push(global(tree.right_children[k], "right child")?);
            a.default_left.push(truthy(&tree.default_left[k]));
            a.leaf_value.push(0.0);
        }
    }
    let ignored = (0..input_of.len())
        .filter(|&j| input_of[j].is_none())
        .map(feature_name)
        .filter(|name| names.resolve(name).is_err())
        .collect();
    let trees = TreeEnsemble::new(&a).map_err(|e| e.to_string())?;
    Ok(XgbImport { trees, ignored })
}

/// `default_left` is 0/1 in XGBoost 1.x+ JSON, booleans in some writers.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        _ => false,
    }
}

/// XGBoost's base score: `"5E-1"` (1.x, 2.x) or `"[5E-1]"` (3.x, a one-element vector for
/// single-output models). XGBoost keeps it in single precision.
pub fn parse_base_score(text: &str) -> Result<f64, String> {
    let inner = text.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(inner);
    let values: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match values.as_slice() {
        [one] => one
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(|x| f64::from(x as f32))
            .ok_or_else(|| format!("base_score {text:?} is not a number")),
        _ => Err(format!(
            "base_score {text:?} holds {} values: multi-output models are not supported",
            values.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn base_scores_of_every_xgboost_generation_parse() {
        assert_eq!(parse_base_score("5E-1"), Ok(0.5));
        assert_eq!(parse_base_score("[5E-1]"), Ok(0.5));
        assert_eq!(
            parse_base_score(" [6.594843E0] "),
            Ok(f64::from(6.594843f32))
        );
        assert!(parse_base_score("[1E0,2E0]")
            .unwrap_err()
            .contains("multi-output"));
        assert!(parse_base_score("abc").is_err());
    }

    fn model(objective: &str, split_type: u8) -> Value {
        serde_json::json!({
            "learner": {
                "attributes": {},
                "feature_names": ["price", "WEEKDAY_3", "unused"],
                "feature_types": ["float", "int", "float"],
                "gradient_booster": {"name": "gbtree", "model": {
                    "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": "1"},
                    "tree_info": [0],
                    "trees": [{
                        "left_children": [1, -1, 3, -1, -1],
                        "right_children": [2, -1, 4, -1, -1],
                        "split_indices": [0, 0, 1, 0, 0],
                        "split_conditions": [5.5, 0.1, 1.0, 0.2, 0.3],
                        "default_left": [1, 0, 0, 0, 0],
                        "split_type": [0, 0, split_type, 0, 0],
                        "categories_nodes": [],
                        "tree_param": {"num_nodes": "5", "size_leaf_vector": "1"}
                    }]
                }},
                "learner_model_param": {"base_score": "[2E0]", "num_class": "0", "num_feature": "3", "num_target": "1"},
                "objective": {"name": objective}
            },
            "version": [3, 2, 0]
        })
    }

    #[test]
    fn a_small_model_reads_and_maps_its_features() {
        let table: BTreeMap<String, String> =
            [("WEEKDAY_{}".to_string(), "d={}".to_string())].into();
        let inputs: Vec<String> = ["d=3", "price"].map(String::from).to_vec();
        let names = FeatureNames::new(&table, &inputs).unwrap();
        let m = read(model("reg:squarederror", 0), &names, true).unwrap();
        assert_eq!(m.ignored, vec!["unused".to_string()]);
        let p = |price: f64, wd3: f64| m.trees.predict(&[wd3, price]);
        assert!((p(1.0, 0.0) - (2.0 + f64::from(0.1f32))).abs() < 1e-12);
        assert!((p(f64::NAN, 0.0) - (2.0 + f64::from(0.1f32))).abs() < 1e-12);
        assert!((p(9.0, 0.0) - (2.0 + f64::from(0.2f32))).abs() < 1e-12);
        assert!((p(9.0, 1.0) - (2.0 + f64::from(0.3f32))).abs() < 1e-12);
        let poisson = read(model("count:poisson", 0), &names, true).unwrap();
        assert!(
            (poisson.trees.predict(&[0.0, 1.0]) - (2f32.ln() as f64 + 0.1f32 as f64).exp()).abs()
                < 1e-9
        );
    }

    #[test]
    fn models_without_feature_names_use_xgboosts_f_indices() {
        let mut doc = model("reg:squarederror", 0);
        doc["learner"]
            .as_object_mut()
            .unwrap()
            .remove("feature_names");
        let table: BTreeMap<String, String> = [
            ("f0".to_string(), "price".to_string()),
            ("f1".to_string(), "d=3".to_string()),
        ]
        .into();
        let inputs: Vec<String> = ["price", "d=3"].map(String::from).to_vec();
        let names = FeatureNames::new(&table, &inputs).unwrap();
        let m = read(doc, &names, true).unwrap();
        assert_eq!(m.ignored, vec!["f2".to_string()]);
        assert!((m.trees.predict(&[9.0, 1.0]) - (2.0 + f64::from(0.3f32))).abs() < 1e-12);
    }

    #[test]
    fn unsupported_models_are_refused_with_the_reason() {
        let table = BTreeMap::new();
        let inputs: Vec<String> = ["WEEKDAY_3", "price"].map(String::from).to_vec();
        let names = FeatureNames::new(&table, &inputs).unwrap();
        let err = read(model("binary:logistic", 0), &names, true).unwrap_err();
        assert!(
            err.contains("unsupported objective \"binary:logistic\""),
            "{err}"
        );
        let err = read(model("reg:squarederror", 1), &names, true).unwrap_err();
        assert!(err.contains("categorical"), "{err}");
        let narrow: Vec<String> = vec!["price".into()];
        let names = FeatureNames::new(&table, &narrow).unwrap();
        let err = read(model("reg:squarederror", 0), &names, true).unwrap_err();
        assert!(err.contains("unknown feature name \"WEEKDAY_3\""), "{err}");
    }
}
