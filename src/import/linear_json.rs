//! Linear models as JSON: `{"intercept": b, "coefficients": {"feature": w, ...}}`, read into a
//! [`LinearModel`] over the bundle's model inputs. A model input the file does not name gets
//! weight 0; a name the manifest cannot map is an error, never silently dropped.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::manifest::FeatureNames;
use crate::model::linear::LinearModel;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    intercept: f64,
    coefficients: BTreeMap<String, f64>,
}

/// True when a parsed JSON document looks like a linear model rather than XGBoost's.
pub fn is_linear(doc: &Value) -> bool {
    doc.get("coefficients").is_some() && doc.get("learner").is_none()
}

/// Reads a parsed linear-model document over `width` model inputs.
pub fn read(doc: Value, names: &FeatureNames<'_>, width: usize) -> Result<LinearModel, String> {
    let file: File = serde_json::from_value(doc).map_err(|e| {
        format!("not a linear model {{\"intercept\": number, \"coefficients\": {{\"feature\": number}}}}: {e}")
    })?;
    if !file.intercept.is_finite() {
        return Err(format!("the intercept {} is not finite", file.intercept));
    }
    let mut coefficients = vec![0.0; width];
    let mut source: Vec<Option<&str>> = vec![None; width];
    for (name, w) in &file.coefficients {
        if !w.is_finite() {
            return Err(format!("the coefficient of {name:?} is not finite"));
        }
        let i = names.resolve(name)?;
        if let Some(other) = source[i] {
            return Err(format!(
                "features {other:?} and {name:?} both map to the same model input: keep one"
            ));
        }
        source[i] = Some(name);
        coefficients[i] = *w;
    }
    Ok(LinearModel {
        intercept: file.intercept,
        coefficients: coefficients.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn linear_files_map_names_and_refuse_unknown_ones() {
        let table: BTreeMap<String, String> = [("cost".to_string(), "price".to_string())].into();
        let inputs: Vec<String> = ["price", "promo", "region=north"]
            .map(String::from)
            .to_vec();
        let names = FeatureNames::new(&table, &inputs).unwrap();
        let doc = json!({"intercept": 3.0, "coefficients": {"cost": -2.0, "region=north": 1.5}});
        assert!(is_linear(&doc));
        let m = read(doc, &names, 3).unwrap();
        assert_eq!(m.coefficients[..], [-2.0, 0.0, 1.5]);
        assert_eq!(m.predict(&[1.0, 1.0, 1.0]), 2.5);
        let err = read(
            json!({"intercept": 1.0, "coefficients": {"colour": 1.0}}),
            &names,
            3,
        )
        .unwrap_err();
        assert!(err.contains("unknown feature name \"colour\""), "{err}");
        let err = read(
            json!({"intercept": 1.0, "coefficients": {"cost": 1.0, "price": 2.0}}),
            &names,
            3,
        )
        .unwrap_err();
        assert!(err.contains("same model input"), "{err}");
        assert!(read(json!({"intercept": 1.0}), &names, 3).is_err());
    }
}
