import type { PageContext, PageProps } from 'bext/ssr';
import { Table } from '../../components/bench.js';

/** Benchmark page: n rows × 5 cells, rows memoised per worker. */
export const revalidate = 60;

export function load({ params }: PageContext) {
  return { n: Math.max(0, Math.min(Number(params.n) || 0, 2000)) };
}

export default function TablePage({ data }: PageProps<typeof load>) {
  return (
    <>
      <title>{`Table ${data.n} · bext example`}</title>
      <h1>{data.n} rows</h1>
      <Table n={data.n} memoised />
    </>
  );
}
