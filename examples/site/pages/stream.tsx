import { Suspense, use } from 'react';
import type { PageContext, PageProps } from 'bext/ssr';

/** Streamed: the shell goes out at once, the slow part follows when its data arrives. */
export const stream = true;
export const mode = 'ssr';

export function load({ query }: PageContext) {
  const ms = Math.min(Number(query.delay ?? 300) || 0, 5000);
  // Not awaited: the promise is passed down and resolved inside a Suspense boundary.
  return { slow: new Promise<string>((r) => setTimeout(() => r(`ready after ${ms} ms`), ms)) };
}

function Slow({ value }: { value: Promise<string> }) {
  return <p id="slow">{use(value)}</p>;
}

export default function Stream({ data }: PageProps<typeof load>) {
  return (
    <>
      <title>Streaming · bext example</title>
      <h1>Streaming</h1>
      <p id="shell">This paragraph left the server before the data below was ready.</p>
      <Suspense fallback={<p id="pending">Waiting for slow data…</p>}>
        <Slow value={data.slow} />
      </Suspense>
    </>
  );
}
