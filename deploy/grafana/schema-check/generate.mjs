// Writes generated/<dashboard>.ts for every deploy/grafana/dashboards/*.json,
// so that `tsc` checks the dashboards against Grafana's published schema
// (npm package @grafana/schema):
//
//   - the whole dashboard as `Dashboard`;
//   - each panel's `options`, and `fieldConfig.defaults.custom`, as the
//     options and field config its panel plugin publishes
//     (@grafana/schema/dist/esm/raw/composable/<type>/panelcfg/...);
//   - each field override property as the field config key its id names
//     (`custom.<key>` of the plugin's field config, or `<key>` of FieldConfig);
//   - each query as the query model of its data source (types.ts).
//
// The JSON is pasted as an object literal, so literal types are kept and
// unknown or misspelt fields are errors (excess property check).
// A panel type without a published options schema is an error here.
//
// Shown to fail: adding "colour": "red" to a panel's fieldConfig.defaults, or
// setting a timeseries legend's "placement" to "top", makes `npm run check`
// exit 2 with error TS2353 / TS2322 naming the panel (deploy/check.sh runs it).

import { readFileSync, readdirSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dashboards = join(here, '..', 'dashboards');
const out = join(here, 'generated');
const schemaPackage = JSON.parse(
  readFileSync(join(here, 'node_modules', '@grafana', 'schema', 'package.json'), 'utf8')
);

/** The module of the published options of a panel plugin, or undefined. */
function panelModule(type) {
  const key = Object.keys(schemaPackage.exports).find((k) =>
    k.includes(`/raw/composable/${type}/panelcfg/`)
  );
  return key && `@grafana/schema/${key.replace(/^\.\//, '')}`;
}

/** Whether a module declares `export interface FieldConfig`. */
function hasFieldConfig(module) {
  const rel = schemaPackage.exports[`./${module.slice('@grafana/schema/'.length)}`].types;
  const dts = readFileSync(join(here, 'node_modules', '@grafana', 'schema', rel), 'utf8');
  return /export interface FieldConfig\b/.test(dts);
}

const QUERY_TYPES = {
  'grafana-postgresql-datasource': 'SqlQuery',
  prometheus: 'PromQuery',
};

const literal = (value) => JSON.stringify(value, null, 2);
const ident = (s) => String(s).replace(/[^A-Za-z0-9_]/g, '_');

rmSync(out, { recursive: true, force: true });
mkdirSync(out);
let failed = false;
for (const file of readdirSync(dashboards).filter((f) => f.endsWith('.json')).sort()) {
  const dashboard = JSON.parse(readFileSync(join(dashboards, file), 'utf8'));
  const imports = new Map(); // panel type -> [alias, has FieldConfig]
  const checks = [];
  const panels = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
  for (const panel of panels) {
    if (panel.type === 'row') continue;
    const name = `panel_${ident(panel.id)}`;
    const module = panelModule(panel.type);
    if (!module) {
      console.error(`${file}: panel ${panel.id} (${panel.title}): no published schema for panel type "${panel.type}"`);
      failed = true;
      continue;
    }
    if (!imports.has(panel.type)) {
      imports.set(panel.type, [`P_${ident(panel.type)}`, hasFieldConfig(module), module]);
    }
    const [alias, withFieldConfig] = imports.get(panel.type);
    const custom = withFieldConfig ? `${alias}.FieldConfig` : 'Record<string, never>';
    checks.push(`// ${panel.title}`);
    checks.push(`export const ${name}_options: Plain<${alias}.Options> = ${literal(panel.options ?? {})};`);
    const defaults = panel.fieldConfig?.defaults ?? {};
    if (defaults.custom !== undefined || withFieldConfig) {
      checks.push(`export const ${name}_custom: Plain<${custom}> = ${literal(defaults.custom ?? {})};`);
    }
    (panel.fieldConfig?.overrides ?? []).forEach((o, i) =>
      (o.properties ?? []).forEach((prop, j) => {
        const type = prop.id.startsWith('custom.')
          ? `Plain<${custom}>[${JSON.stringify(prop.id.slice('custom.'.length))}]`
          : `Plain<FieldConfig>[${JSON.stringify(prop.id)}]`;
        checks.push(`export const ${name}_override_${i}_${j}: ${type} = ${literal(prop.value)};`);
      })
    );
    for (const target of panel.targets ?? []) {
      const dsType = target.datasource?.type ?? panel.datasource?.type;
      const queryType = QUERY_TYPES[dsType];
      if (!queryType) {
        console.error(`${file}: panel ${panel.id} (${panel.title}): no query model for data source type "${dsType}"`);
        failed = true;
        continue;
      }
      checks.push(`export const ${name}_target_${ident(target.refId)}: ${queryType} = ${literal(target)};`);
    }
  }
  (dashboard.annotations?.list ?? []).forEach((a, i) => {
    const queryType = QUERY_TYPES[a.datasource?.type];
    if (a.target && queryType) {
      checks.push(`export const annotation_${i}_target: ${queryType} = ${literal(a.target)};`);
    }
  });
  const lines = [
    `// Generated by generate.mjs from dashboards/${file}; do not edit.`,
    `import type { Dashboard, FieldConfig } from '@grafana/schema';`,
    `import type { Plain, SqlQuery, PromQuery } from '../types';`,
    ...[...imports.values()].map(([alias, , module]) => `import type * as ${alias} from '${module}';`),
    '',
    `export const dashboard: Plain<Dashboard> = ${literal(dashboard)};`,
    '',
    ...checks,
    '',
  ];
  writeFileSync(join(out, file.replace(/\.json$/, '.ts')), lines.join('\n'));
  console.log(`generated/${file.replace(/\.json$/, '.ts')}: ${panels.length} panels`);
}
process.exit(failed ? 1 : 0);
