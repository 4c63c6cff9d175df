// Types for checking dashboard JSON with TypeScript (see generate.mjs).

/**
 * A type as it is written in JSON: @grafana/schema declares many fields as
 * TypeScript string enums (ThresholdsMode, FieldColorModeId, StackingMode,
 * TableCellDisplayMode, ...), which a string literal such as "absolute"
 * cannot be assigned to. Plain<T> replaces every string enum by the union of
 * its values (`${E}`) and leaves the rest of the shape, required and
 * optional fields and their types, as the schema declares it. Object
 * literals assigned to it still get TypeScript's excess property check, so
 * a misspelt or unknown field is an error.
 */
export type Plain<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Plain<U>>
      : T extends object
        ? { [K in keyof T]: Plain<T[K]> }
        : T;

/**
 * A query of Grafana's SQL data sources (PostgreSQL among them), as Grafana
 * saves it in a panel's targets. @grafana/schema does not publish it; this
 * mirrors `SQLQuery` of grafana/grafana packages/grafana-sql/src/types.ts
 * (extending `DataQuery` of @grafana/schema), keeping the fields a raw SQL
 * query uses and requiring what paicha's panels rely on.
 */
export interface SqlQuery {
  refId: string;
  datasource: { type: 'grafana-postgresql-datasource'; uid: string };
  hide?: boolean;
  format: 'time_series' | 'table';
  rawQuery: true;
  editorMode: 'code';
  rawSql: string;
  alias?: string;
  dataset?: string;
  table?: string;
}

/**
 * A Prometheus query as Grafana saves it: mirrors the `Prometheus` query of
 * grafana/grafana packages/grafana-prometheus/src/dataquery.ts (extending
 * `DataQuery` of @grafana/schema), plus `interval` of `PromQuery`.
 */
export interface PromQuery {
  refId: string;
  datasource: { type: 'prometheus'; uid: string };
  hide?: boolean;
  editorMode?: 'builder' | 'code';
  exemplar?: boolean;
  expr: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  interval?: string;
  intervalFactor?: number;
  legendFormat?: string;
  range?: boolean;
}
