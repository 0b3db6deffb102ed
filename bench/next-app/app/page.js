// The ISR page bench/cache.ts measures: regenerated at most once a minute, served from Next's cache between.
export const revalidate = 60;

export default function Page() {
  const items = Array.from({ length: 20 }, (_, i) => i);
  return (
    <ul>
      {items.map((i) => (
        <li key={i} className="item">
          <a href={`/items/${i}`}>Item number {i}</a> <span>description</span>
        </li>
      ))}
    </ul>
  );
}
