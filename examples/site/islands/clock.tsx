import type { PageContext } from 'bext/ssr';

/** This island is cached for one second, whatever the page around it does. */
export const mode = 'swr';
export const revalidate = 1;
export const swr = 5;

export function load(props: { tz?: string }, _ctx: PageContext) {
  const tz = typeof props.tz === 'string' ? props.tz : 'UTC';
  return { tz, now: new Date().toLocaleTimeString('en-GB', { timeZone: tz, hour12: false }) };
}

export default function Clock({ data }: { data: ReturnType<typeof load> }) {
  return (
    <p className="clock">
      Server time: <time id="clock">{data.now}</time> ({data.tz})
    </p>
  );
}
