// Prints a Prometheus rule file with one recording rule per PromQL query of
// the dashboards (panels, and variables' label_values() excepted), with
// Grafana's variables replaced as Grafana would before sending the query:
// $__rate_interval and $__interval by a duration, $__range by 1h, and
// dashboard variables ($instance, ${instance}) by the regex ".*".
// deploy/check.sh runs `promtool check rules` on it, so a query that does
// not parse fails the check.
//
// usage: node promql-rules.mjs > rules.yml

import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dashboards = join(dirname(fileURLToPath(import.meta.url)), '..', 'dashboards');

function grafanaVariables(expr) {
  return expr
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__interval_ms', '60000')
    .replaceAll('$__interval', '1m')
    .replaceAll('$__range_s', '3600')
    .replaceAll('$__range_ms', '3600000')
    .replaceAll('$__range', '1h')
    .replace(/\$\{\w+(:\w+)?\}|\$\w+/g, '.*');
}

const rules = [];
for (const file of readdirSync(dashboards).filter((f) => f.endsWith('.json')).sort()) {
  const dashboard = JSON.parse(readFileSync(join(dashboards, file), 'utf8'));
  const panels = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
  for (const panel of panels) {
    for (const target of panel.targets ?? []) {
      const type = target.datasource?.type ?? panel.datasource?.type;
      if (type !== 'prometheus') continue;
      rules.push({
        record: `grafana:${file.replace(/\W/g, '_')}:panel_${panel.id}_${target.refId}`,
        expr: grafanaVariables(target.expr),
      });
    }
  }
}
if (rules.length === 0) {
  console.error('no Prometheus queries found');
  process.exit(1);
}
// JSON is YAML: quoting every string keeps the expressions intact.
console.log(JSON.stringify({ groups: [{ name: 'grafana-dashboards', rules }] }, null, 2));
