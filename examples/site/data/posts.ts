/** The example blog's posts (a real site would read a CMS or a database in its loaders). */
export interface Post {
  slug: string;
  title: string;
  date: string;
  summary: string;
  body: string[];
  tags: string[];
}

export const posts: Post[] = [
  {
    slug: 'hello-bext',
    title: 'Hello, bext',
    date: '2025-01-06',
    summary: 'A web server in which every feature is a plugin, this page included.',
    body: [
      'This page was rendered by React 19 inside a worker thread of the ssr plugin, then stored by the cache plugin, which now answers it without rendering until it is due for revalidation.',
      'The kernel knows nothing about React: it runs hooks. The cache wraps the render; static files are tried before it; the renderer is the last leaf.',
    ],
    tags: ['bext', 'ssr'],
  },
  {
    slug: 'islands',
    title: 'Server islands',
    date: '2025-02-11',
    summary: 'Parts of a cached page that render later, each with its own cache rule.',
    body: [
      'An island is a placeholder in the page. After load, a small script asks /__bext/island/<name> for its HTML, which the workers render and the cache keeps for as long as the island says.',
      'The page around it can be cached for an hour while the island is fresh every second.',
    ],
    tags: ['ssr', 'islands'],
  },
  {
    slug: 'turbo',
    title: 'Navigation without a framework on the client',
    date: '2025-03-02',
    summary: 'Turbo fetches the next page and swaps the body: no hydration, no client bundle.',
    body: [
      'Links and forms on this site are followed by Turbo: it fetches the HTML the server renders anyway and replaces the body, keeping scripts and styles loaded.',
      'Pages stay plain HTML; the server does the rendering it was going to do.',
    ],
    tags: ['turbo'],
  },
  {
    slug: 'early-hints',
    title: 'Early Hints',
    date: '2025-04-20',
    summary: 'A 103 response tells the browser what to fetch while the page is still rendering.',
    body: [
      'The ssr plugin remembers, per route, the stylesheets and module scripts a rendered page links in its head, and sends them as a 103 before the next render of that route starts.',
    ],
    tags: ['performance'],
  },
  {
    slug: 'memo',
    title: 'Memoised components',
    date: '2025-05-14',
    summary: 'Pure components whose HTML is kept per props inside each render worker.',
    body: [
      'Wrap a component with memo() from bext/ssr and its HTML is spliced into later renders for the same props without running React for it.',
    ],
    tags: ['performance', 'ssr'],
  },
];

/** A loader's data source: answers after a short, simulated round trip. */
export async function getPost(slug: string): Promise<Post | undefined> {
  await new Promise((r) => setTimeout(r, 2));
  return posts.find((p) => p.slug === slug);
}

export async function listPosts(q = ''): Promise<Post[]> {
  await new Promise((r) => setTimeout(r, 2));
  const needle = q.trim().toLowerCase();
  const all = [...posts].sort((a, b) => b.date.localeCompare(a.date));
  return needle ? all.filter((p) => `${p.title} ${p.summary} ${p.tags.join(' ')}`.toLowerCase().includes(needle)) : all;
}
