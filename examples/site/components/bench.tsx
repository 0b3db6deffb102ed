import { memo } from 'bext/ssr';

/** Deterministic rows for the table pages (the same data on every render). */
export function rows(n: number): { id: number; name: string; email: string; city: string; score: number }[] {
  const cities = ['Lisbon', 'Oslo', 'Kyoto', 'Lima', 'Accra', 'Tallinn', 'Perth'];
  return Array.from({ length: n }, (_, i) => ({ id: i + 1, name: `User ${i + 1}`, email: `user${i + 1}@example.com`, city: cities[i % cities.length]!, score: (i * 7919) % 1000 }));
}

export type RowData = ReturnType<typeof rows>[number];

export function Row({ id, name, email, city, score }: RowData) {
  return (
    <tr className={id % 2 ? 'odd' : 'even'}>
      <td>{id}</td>
      <td>{name}</td>
      <td><a href={`mailto:${email}`}>{email}</a></td>
      <td>{city}</td>
      <td>{score}</td>
    </tr>
  );
}

export const MemoRow = memo(Row, { name: 'Row' });

function Rows({ n, memoised }: { n: number; memoised: boolean }) {
  const R = memoised ? MemoRow : Row;
  return (
    <table>
      <thead>
        <tr><th>#</th><th>Name</th><th>Email</th><th>City</th><th>Score</th></tr>
      </thead>
      <tbody>
        {rows(n).map((r) => (
          <R key={r.id} {...r} />
        ))}
      </tbody>
    </table>
  );
}

/** The whole table memoised per `n`; on a miss its rows still come from the row memo (shared by /table/200 and /table/300). */
const MemoTable = memo(Rows, { name: 'Table' });

export function Table({ n, memoised }: { n: number; memoised: boolean }) {
  return memoised ? <MemoTable n={n} memoised /> : <Rows n={n} memoised={false} />;
}
