// examples/site/pages/table-plain/[n].tsx: n rows × 5 cells, ISR (rendered on first request, then cached).
export const revalidate = 60;
export const dynamicParams = true;
export async function generateStaticParams() {
  return [];
}

function rows(n) {
  const cities = ['Lisbon', 'Oslo', 'Kyoto', 'Lima', 'Accra', 'Tallinn', 'Perth'];
  return Array.from({ length: n }, (_, i) => ({ id: i + 1, name: `User ${i + 1}`, email: `user${i + 1}@example.com`, city: cities[i % cities.length], score: (i * 7919) % 1000 }));
}

function Row({ id, name, email, city, score }) {
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

export default async function TablePage({ params }) {
  const n = Math.max(0, Math.min(Number((await params).n) || 0, 2000));
  return (
    <>
      <title>{`Table ${n} · bext example`}</title>
      <h1>{n} rows</h1>
      <table>
        <thead>
          <tr><th>#</th><th>Name</th><th>Email</th><th>City</th><th>Score</th></tr>
        </thead>
        <tbody>
          {rows(n).map((r) => (
            <Row key={r.id} {...r} />
          ))}
        </tbody>
      </table>
    </>
  );
}
